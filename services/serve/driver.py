"""`serve run` on a Ray that Loupe starts itself: `python -m services.serve.driver [--dashboard] ADDRESS CONFIG`.

`serve run` starts its private Ray with the dashboard (about 1 GB of resident memory for
its modules) and has no switch for it. This driver starts Ray first, with the dashboard only
when asked, then hands over to `serve run` unchanged (it reuses an initialised Ray).
ADDRESS is "local" for a private Ray, or a running cluster's address.

A private Ray is one machine's: its daemons (GCS, raylet with its node manager and object
manager, workers, dashboard and its agent, the metrics agent and export port, the runtime env
agent, the autoscaler's metrics) listen on loopback only. Ray binds them to the node's IP,
and on Linux it picks the IP other machines reach it by; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
makes it pick 127.0.0.1 instead, as it does on macOS and Windows. A user who sets that
variable (e.g. to 1) keeps their choice. A running cluster is left as it was configured.
"""

from __future__ import annotations

import os
import sys

# Ray's switch for a single-machine node (read once, when `ray` is imported).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def private_ray_env(address: str, environ: dict[str, str]) -> dict[str, str]:
    """The variables to add to `environ` before `ray` is imported: none but for a private Ray,
    and none that the user has set already."""
    if address != "local":
        return {}
    return {name: value for name, value in LOOPBACK_ENV.items() if name not in environ}


def ray_options(address: str, dashboard: bool, environ: dict[str, str]) -> dict:
    """`ray.init` keywords besides the address: for a private Ray, the dashboard only when
    asked, and node and dashboard on loopback unless the user let the node use its network IP."""
    if address != "local":
        return {}
    options: dict = {"include_dashboard": dashboard}
    # Ray reads the variable as true for "1" or "true" (any case) only.
    if environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0").lower() not in ("1", "true"):
        # Ray's defaults already say so with the variable above; spelled out so that a change
        # of default in a later Ray does not open them.
        options |= {"_node_ip_address": "127.0.0.1", "dashboard_host": "127.0.0.1"}
    return options


def main(argv: list[str]) -> int:
    dashboard = "--dashboard" in argv
    address, config = [a for a in argv if a != "--dashboard"]
    os.environ.update(private_ray_env(address, os.environ))
    options = ray_options(address, dashboard, os.environ)

    import ray
    from ray.serve.scripts import cli

    ray.init(address=address, namespace="serve", **options)
    return cli.main(["run", config], prog_name="serve", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
