"""The committed generated code matches the .proto files."""

from protos import generate


def test_generated_code_is_fresh(capsys):
    assert generate.main(["--check"]) == 0, capsys.readouterr().out


def test_a_newer_generator_alone_does_not_make_the_code_stale():
    """grpcio-tools stamps its own version into the output; only the rest must match."""
    a = "GRPC_GENERATED_VERSION = '1.85.1'\nx = 1\n# Protobuf Python Version: 7.35.1\nValidateProtobufRuntimeVersion(\n  7, 35, 1)\n"
    b = a.replace("1.85.1", "1.86.0").replace("7.35.1", "7.40.2").replace("35, 1", "40, 2")
    assert generate._unstamped(a) == generate._unstamped(b)
    assert generate._unstamped(a) != generate._unstamped(b.replace("x = 1", "x = 2"))


def test_messages_pickle_round_trip():
    """Serve pickles requests between its proxy and the replicas."""
    import pickle

    from protos.loupe.v1 import index_pb2, search_pb2

    request = search_pb2.SearchTextRequest(query="a red circle", options=search_pb2.SearchOptions(limit=3))
    assert pickle.loads(pickle.dumps(request)) == request
    batch = index_pb2.IndexImagesRequest(collection="c", items=[index_pb2.ImageItem(data=b"x", id="a")])
    assert pickle.loads(pickle.dumps(batch)) == batch


def test_every_service_of_the_contract_is_served() -> None:
    """A new .proto service needs its servicer on the gRPC port, a health name and Ingress methods."""
    from services.serve.deployments import HEALTH_SERVICES, Ingress
    from services.serve.grpcserver import SERVICERS
    from tests.fixtures.contract import services

    registered = [f.__name__ for f in SERVICERS]
    ingress = Ingress.func_or_class
    for full_name, methods in services().items():
        short = full_name.rsplit(".", 1)[1]
        assert f"add_{short}Servicer_to_server" in registered, full_name
        assert full_name in HEALTH_SERVICES
        assert all(callable(getattr(ingress, m, None)) for m in methods), (full_name, methods)
