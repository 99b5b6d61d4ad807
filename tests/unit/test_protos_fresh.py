"""The committed generated code matches the .proto files."""

from protos import generate


def test_generated_code_is_fresh(capsys):
    assert generate.main(["--check"]) == 0, capsys.readouterr().out


def test_messages_pickle_round_trip():
    """Serve pickles requests between its proxy and the replicas."""
    import pickle

    from protos.loupe.v1 import index_pb2, search_pb2

    request = search_pb2.SearchTextRequest(query="a red circle", options=search_pb2.SearchOptions(limit=3))
    assert pickle.loads(pickle.dumps(request)) == request
    batch = index_pb2.IndexImagesRequest(collection="c", items=[index_pb2.ImageItem(data=b"x", id="a")])
    assert pickle.loads(pickle.dumps(batch)) == batch
