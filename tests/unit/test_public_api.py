import castore
import castore.errors


def test_all_is_exactly_the_public_names_sorted():
    public = sorted(n for n in dir(castore) if not n.startswith("_") and n[0].isupper())
    assert castore.__all__ == sorted(castore.__all__)
    assert set(castore.__all__) == set(public)


def test_issue_names_are_exported():
    for name in ("Store", "ConflictError", "NotFoundError", "InvalidRefError", "InvalidValueError"):
        assert name in castore.__all__


def test_every_error_is_a_castore_error():
    for name in castore.errors.__all__:
        assert issubclass(getattr(castore.errors, name), castore.errors.CastoreError)
