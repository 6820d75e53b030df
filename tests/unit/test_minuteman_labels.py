import pytest

from cluster.vip_labels import (
    VipLabelError,
    dns_label,
    is_vip_label_key,
    parse_vip,
    task_label_port_index,
    vip_address_key,
    vip_dns_name,
)


@pytest.mark.parametrize("value, name, address, port", [
    ("/web:80", "/web", None, 80),
    ("web:8080", "/web", None, 8080),
    ("/shop/web:443", "/shop/web", None, 443),
    ("1.2.3.4:5000", None, "1.2.3.4", 5000),
    (" 10.0.0.7:1 ", None, "10.0.0.7", 1),
])
def test_parse_named_and_address_vips(value, name, address, port):
    spec = parse_vip(value)
    assert (spec.name, spec.address, spec.port) == (name, address, port)
    assert spec.is_named == (name is not None)


@pytest.mark.parametrize("value, complaint", [
    ("/web", "expected '/name:port'"),
    ("/web:http", "'http' is not a number"),
    ("/web:0", "outside 1-65535"),
    ("/web:70000", "outside 1-65535"),
    ("300.1.2.3:80", "not a valid IPv4 address"),
    ("1.2.3:80", "not a valid IPv4 address"),
    ("[::1]:80", "only IPv4"),
    ("::1:80", "only IPv4"),
    ("/$$$:80", "usable in DNS"),
    (":80", "expected"),
])
def test_malformed_values_name_the_problem(value, complaint):
    with pytest.raises(VipLabelError, match=complaint.replace("(", r"\(").replace("[", r"\[")):
        parse_vip(value)


def test_label_keys():
    assert is_vip_label_key("VIP_0") and is_vip_label_key("vip_1") and is_vip_label_key("VIP")
    assert not is_vip_label_key("HAPROXY_VIP") and not is_vip_label_key("vi")
    assert task_label_port_index("vip_port0") == 0
    assert task_label_port_index("VIP_PORT12") == 12
    assert task_label_port_index("vip_portx") is None
    assert task_label_port_index("VIP_0") is None


@pytest.mark.parametrize("name, label", [
    ("/web", "web"),
    ("/Shop/Web_API", "shopweb-api"),
    ("/a.b:c", "abc"),
    ("/ünïcode-ok", "ncode-ok"),
])
def test_dns_labels(name, label):
    assert dns_label(name) == label


def test_dns_name_and_address_key():
    assert vip_dns_name("/web", "marathon") == "web.marathon.l4lb.thisdcos.directory"
    assert vip_dns_name("/My_App", "Kafka_Fw") == "my-app.kafka-fw.l4lb.thisdcos.directory"
    assert vip_address_key("/web", "marathon") == "marathon:/web"
    assert vip_address_key("web", "marathon") == "marathon:/web"
