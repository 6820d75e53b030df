"""The forwarded-answer cache: TTL countdown, negative caching cap, what is never cached, LRU, stale."""

from __future__ import annotations

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord

from spartan_dns.cache import STALE_ANSWER_TTL, ResponseCache

KEY = ("example.com", QTYPE.A, 1)


def answer(ttl: int = 300, rcode: int = 0, soa_ttl: int | None = None, soa_min: int = 900) -> DNSRecord:
    response = DNSRecord.question("example.com").reply()
    response.header.rcode = rcode
    if rcode == 0 and soa_ttl is None:
        response.add_answer(RR("example.com.", QTYPE.A, ttl=ttl, rdata=A("93.184.216.34")))
    if soa_ttl is not None:
        response.add_auth(RR("com.", QTYPE.SOA, ttl=soa_ttl,
                             rdata=SOA("a.gtld.", "nstld.", (1, 2, 3, 4, soa_min))))
    return response


def test_ttls_count_down_while_cached():
    cache = ResponseCache()
    cache.put(KEY, answer(ttl=300), now=1000.0)
    entry = cache.fresh(KEY, now=1010.4)
    answers, _, _ = entry.sections(1010.4)
    assert answers[0].ttl == 290
    assert cache.fresh(KEY, now=1300.0) is None


def test_next_tick_is_the_next_whole_second_of_age():
    cache = ResponseCache()
    entry = cache.put(KEY, answer(ttl=3), now=1000.0)
    assert entry.next_tick(1000.2) == 1001.0
    assert entry.next_tick(1002.5) == 1003.0          # and never past expiry


def test_negative_answers_are_cached_at_most_the_negative_ttl():
    cache = ResponseCache(negative_ttl=5)
    entry = cache.put(KEY, answer(rcode=RCODE.NXDOMAIN, soa_ttl=900), now=0.0)
    assert entry.ttl == 5
    short = cache.put(KEY, answer(rcode=RCODE.NXDOMAIN, soa_ttl=900, soa_min=2), now=0.0)
    assert short.ttl == 2                              # SOA MINIMUM below our cap wins
    nodata = cache.put(KEY, answer(rcode=0, soa_ttl=60), now=0.0)
    assert nodata.ttl == 5


def test_servfail_truncated_and_zero_ttl_answers_are_not_cached():
    cache = ResponseCache()
    assert cache.put(KEY, answer(rcode=RCODE.SERVFAIL, soa_ttl=None), now=0.0) is None
    truncated = answer()
    truncated.header.tc = 1
    assert cache.put(KEY, truncated, now=0.0) is None
    assert cache.put(KEY, answer(ttl=0), now=0.0) is None
    assert len(cache) == 0


def test_least_recently_used_entry_is_evicted():
    cache = ResponseCache(max_entries=2)
    keys = [(f"n{i}.example", QTYPE.A, 1) for i in range(3)]
    cache.put(keys[0], answer(), 0.0)
    cache.put(keys[1], answer(), 0.0)
    cache.fresh(keys[0], 1.0)                          # touch: n0 is now the most recent
    cache.put(keys[2], answer(), 2.0)
    assert cache.fresh(keys[1], 3.0) is None
    assert cache.fresh(keys[0], 3.0) is not None and cache.fresh(keys[2], 3.0) is not None


def test_expired_answers_stay_available_as_stale_within_max_stale():
    cache = ResponseCache(max_stale=100)
    cache.put(KEY, answer(ttl=10), now=0.0)
    assert cache.fresh(KEY, 20.0) is None
    stale = cache.stale(KEY, 20.0)
    answers, _, _ = stale.sections(20.0, stale=True)
    assert answers[0].ttl == STALE_ANSWER_TTL
    assert cache.stale(KEY, 111.0) is None
