import pytest

from hf_tune.registry import Registry, RegistryError


def test_register_get_and_did_you_mean():
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1, note="first")
    reg.add("beta", 2)
    assert reg.get("alpha") == 1
    assert reg.entry("alpha").meta == {"note": "first"}
    assert reg.names() == ["alpha", "beta"]
    with pytest.raises(RegistryError, match='did you mean "alpha"'):
        reg.get("alpah")
    with pytest.raises(ValueError, match="twice"):
        reg.add("alpha", 3)
