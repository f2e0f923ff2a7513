import badit


def test_version():
    assert badit.__version__.count(".") == 2
