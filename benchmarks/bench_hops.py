"""What one hop costs on this machine: where the per-call overhead of the service goes.

    python -m benchmarks.bench_hops                 # ~1 min on 2 cores
    python -m benchmarks.bench_hops --rounds 1000

Starts a private Ray (no dashboard) with the replica settings `loupe serve` uses
(services.cli.launch.serve_env) and, sequential and warm, times from inside a Serve replica:

- a no-op await (the floor of the replica's event loop),
- a call to a plain Ray actor (Ray's task transport alone),
- a Serve handle call to another deployment (what the Ingress -> Encoder hop pays), as a
  Ray actor call (Serve's default) and by value over Serve's gRPC transport,

and from this process: a unary gRPC call to a grpc.aio server run inside a replica (what
the gRPC port served by the Ingress itself costs). `python -m benchmarks.bench_load
--skip-sweep` gives the same through the service ("gRPC + Ingress only") and for the RPCs
themselves. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from benchmarks.bench_gateway import free_port
from benchmarks.bench_load import pct

RESULTS = Path(__file__).resolve().parent / "results"


async def timed(call, rounds: int) -> list[float]:
    for _ in range(min(20, rounds)):  # warm up
        await call()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=500, help="sequential calls per hop")
    p.add_argument("--out", default=str(RESULTS / "hops.json"))
    args = p.parse_args()

    from services.cli.launch import serve_env

    os.environ.update(serve_env({"applications": [{}]}))
    import grpc
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, namespace="bench-hops")

    @ray.remote
    class Plain:
        async def ping(self, x):
            return x

    @serve.deployment(name="Target")
    class Target:
        async def ping(self, x):
            return x

    @serve.deployment(name="Caller")
    class Caller:
        def __init__(self, target, actor_name: str) -> None:
            self.target, self.actor = target, ray.get_actor(actor_name, namespace="bench-hops")
            self.server = None

        async def measure(self, rounds: int) -> dict:
            async def noop():
                await asyncio.sleep(0)

            by_value = self.target.options(_by_reference=False)

            return {
                "no-op await in a replica": pct(await timed(noop, rounds)),
                "plain Ray actor call": pct(await timed(lambda: self.actor.ping.remote(1), rounds)),
                "Serve handle call": pct(await timed(lambda: self.target.ping.remote(1), rounds)),
                # Serve's own gRPC transport between replicas instead of a Ray actor call.
                "Serve handle call, by value (gRPC)": pct(await timed(lambda: by_value.ping.remote(1), rounds)),
            }

        async def listen(self, port: int) -> None:
            async def ping(request: bytes, context) -> bytes:
                return request

            self.server = grpc.aio.server()
            handler = grpc.method_handlers_generic_handler(
                "bench.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
            )
            self.server.add_generic_rpc_handlers((handler,))
            self.server.add_insecure_port(f"127.0.0.1:{port}")
            await self.server.start()

    plain = Plain.options(name="bench-plain").remote()  # held: an unreferenced actor dies
    ray.get(plain.ping.remote(1))
    port = free_port()

    async def run() -> dict:
        handle = serve.run(Caller.bind(Target.bind(), "bench-plain"), name="hops", route_prefix=None)
        results = await handle.measure.remote(args.rounds)
        await handle.listen.remote(port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            ping = channel.unary_unary("/bench.Echo/Ping")
            results["gRPC call to a server in a replica"] = pct(await timed(lambda: ping(b"x"), args.rounds))
        return results

    try:
        results = asyncio.run(run())
    finally:
        ray.shutdown()  # the private Ray, Serve with it
    print(f"\nsequential, warm, {args.rounds} calls each (ms)")
    print(f"  {'hop':38} {'p50':>8} {'p95':>8}")
    for name, row in results.items():
        print(f"  {name:38} {row['p50_ms']:8.2f} {row['p95_ms']:8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "cpus": os.cpu_count(), "hops": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
