"""`serve run` on a Ray that Loupe starts itself: `python -m services.serve.driver [--dashboard] ADDRESS CONFIG`.

`serve run` starts its private Ray with the dashboard (about 1 GB of resident memory for
its modules) and has no switch for it. This driver starts Ray first, with the dashboard only
when asked, then hands over to `serve run` unchanged (it reuses an initialised Ray).
ADDRESS is "local" for a private Ray, or a running cluster's address.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import ray
    from ray.serve.scripts import cli

    dashboard = "--dashboard" in argv
    address, config = [a for a in argv if a != "--dashboard"]
    options = {"include_dashboard": dashboard} if address == "local" else {}
    ray.init(address=address, namespace="serve", **options)
    return cli.main(["run", config], prog_name="serve", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
