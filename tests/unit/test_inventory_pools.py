"""The inventory's pools: what a pool event published after a re-listing can still name."""

from messages.objects import PoolObject
from worker.state import inventory as inventory_module
from worker.state.inventory import Inventory


def pool(name: str, state: str = "running") -> PoolObject:
    return PoolObject(name=name, uuid=f"uuid-{name}", type="dir", state=state, persistent=True, autostart=False,
                      capacity=10, allocation=1, available=9, target_path=f"/srv/{name}")


def test_a_pool_a_relisting_dropped_is_still_known_as_it_was():
    inventory = Inventory()
    inventory.replace_pools([pool("a"), pool("b")])
    inventory.replace_pools([pool("b")])
    assert inventory.pool("a") is None
    assert inventory.last_known("a") == pool("a")


def test_a_forgotten_pool_is_still_known_and_a_redefined_one_is_the_new_one():
    inventory = Inventory()
    inventory.set_pool(pool("a"))
    inventory.forget_pool("a")
    assert inventory.last_known("a") == pool("a")
    inventory.set_pool(pool("a", state="inactive"))
    inventory.forget_pool("b")
    assert inventory.last_known("a").state.value == "inactive"
    assert inventory.last_known("b") is None


def test_pools_gone_long_ago_are_not_kept_forever(monkeypatch):
    monkeypatch.setattr(inventory_module, "GONE_POOLS", 2)
    inventory = Inventory()
    for name in "abc":
        inventory.set_pool(pool(name))
        inventory.forget_pool(name)
    assert [inventory.last_known(name) is not None for name in "abc"] == [False, True, True]
