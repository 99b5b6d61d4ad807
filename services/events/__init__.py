"""Events that are not vectors (usage, audit), in a relational store: SQLite in the data folder
by default, PostgreSQL when configured. `store` owns the schema."""
