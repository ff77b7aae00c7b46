import typing

import castore
import castore.errors
import castore.reports


def test_all_is_exactly_the_public_names_sorted():
    public = sorted(
        n
        for n in dir(castore)  # classes, and the entry points (functions, some loaded lazily)
        if not n.startswith("_") and (n[0].isupper() or callable(getattr(castore, n)))
    )
    assert castore.__all__ == sorted(castore.__all__)
    assert set(castore.__all__) == set(public)


def test_issue_names_are_exported():
    for name in ("Store", "ConflictError", "NotFoundError", "InvalidRefError", "InvalidValueError"):
        assert name in castore.__all__


def test_every_error_is_a_castore_error():
    for name in castore.errors.__all__:
        assert issubclass(getattr(castore.errors, name), castore.errors.CastoreError)


def test_every_result_type_a_store_method_returns_is_exported():
    inherited = [vars(cls) for cls in reversed(castore.Store.__mro__[:-1])]  # base classes too
    methods = {name: member for members in inherited for name, member in members.items()}
    assert {"update", "patch", "incr"} <= set(methods)
    for name, member in methods.items():
        if name.startswith("_") or not callable(member):
            continue
        returned = typing.get_type_hints(member)["return"]
        if returned is type(None) or isinstance(returned, typing.TypeVar):
            continue
        assert returned.__module__.startswith("castore."), (name, returned)
        assert returned.__name__ in castore.__all__, (
            f"Store.{name} returns {returned.__name__}, which castore does not export"
        )
        assert getattr(castore, returned.__name__) is returned


def test_the_maintenance_reports_and_retention_are_exported():
    for name in castore.reports.__all__:
        if name[0].isupper() and not name.isupper():
            assert name in castore.__all__
            assert getattr(castore, name) is getattr(castore.reports, name)
