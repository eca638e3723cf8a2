import pytest

from vmbus.hvsock import port_of, service_id


def test_bridge_port_service_id():
    assert service_id(0x40000000) == "40000000-facb-11e6-bd58-64006a7986d3"
    assert service_id(109) == "0000006d-facb-11e6-bd58-64006a7986d3"


@pytest.mark.parametrize("port", [0, 1, 109, 564, 0x40000000, 0x40000001, 0xFFFFFFFF])
def test_round_trip(port):
    assert port_of(service_id(port)) == port
    assert port_of("{" + service_id(port).upper() + "}") == port


@pytest.mark.parametrize("bad", ["", "40000000-0000-11e6-bd58-64006a7986d3", "xyz", "4000000-facb-11e6-bd58-64006a7986d3"])
def test_not_a_vsock_service(bad):
    with pytest.raises(ValueError):
        port_of(bad)


def test_port_range():
    with pytest.raises(ValueError):
        service_id(1 << 32)
