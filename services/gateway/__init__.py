"""The gateway in front of every call: who the caller is, and what it may do and touch."""
