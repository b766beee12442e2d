"""fm-edge's memory tier (edge/cache.c, docs/downloads.md "Memory tier"): the bytes of small hot cached objects kept in
memory and answered without reading the disk, against the real stack (RGW is the origin, URLs signed by botocore's
CloudFrontSigner as in test_edge.py).

    FM_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_edge_memory.py -q
"""
import concurrent.futures
import threading
import time

import requests

from helpers_fm import wait_for

from test_edge import counters, edge, error_code, metric, put_object, s3, sign, signer  # noqa: F401 (fixtures)


def memory_hits(edge):
    return metric(edge, "fm_edge_memory_hits_total")


def memory_gauges(edge):
    return metric(edge, "fm_edge_memory_bytes"), metric(edge, "fm_edge_memory_objects")


def test_small_hot_objects_are_answered_from_memory(stack, s3, edge, signer):
    """A small object's bytes are kept in memory from its second hit (edge/cache.c); every answer stays the same."""
    key, body = put_object(stack, s3, 4096)
    url = sign(signer, edge, key)
    first = requests.get(url, timeout=10)  # the miss: filled from the origin
    assert first.status_code == 200 and first.content == body
    before = memory_hits(edge)
    second = requests.get(url, timeout=10)  # the first hit: from the disk
    assert second.status_code == 200 and second.content == body
    assert memory_hits(edge) == before
    for _ in range(5):  # the second hit reads the bytes into memory and sends them; the others find them there
        r = requests.get(url, timeout=10)
        assert r.status_code == 200 and r.content == body
        assert r.headers["ETag"] == first.headers["ETag"]
        assert r.headers["Content-Length"] == "4096" and r.headers["Accept-Ranges"] == "bytes"
    assert memory_hits(edge) == before + 5
    # Ranges, conditionals and HEAD from memory answer as from the disk.
    r = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert r.status_code == 206 and r.content == body[100:200]
    assert r.headers["Content-Range"] == "bytes 100-199/4096"
    r = requests.get(url, headers={"Range": "bytes=-7"}, timeout=10)
    assert r.status_code == 206 and r.content == body[-7:]
    r = requests.get(url, headers={"Range": "bytes=5000-"}, timeout=10)
    assert r.status_code == 416 and error_code(r) == "range_not_satisfiable"
    r = requests.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=10)
    assert r.status_code == 304 and r.content == b""
    r = requests.head(url, timeout=10)
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "4096"
    assert memory_hits(edge) == before + 10
    # the gauges refresh once a second
    assert wait_for(lambda: metric(edge, "fm_edge_memory_bytes") >= 4096 and metric(edge, "fm_edge_memory_objects") >= 1,
                    10)

    # Above FM_EDGE_MEMORY_OBJECT_MAX (64 KiB by default): always from the disk.
    big, big_body = put_object(stack, s3, 70000)
    big_url = sign(signer, edge, big)
    before = memory_hits(edge)
    for _ in range(4):
        r = requests.get(big_url, timeout=10)
        assert r.status_code == 200 and r.content == big_body
    assert memory_hits(edge) == before


def test_purge_drops_the_memory_copy(stack, s3, edge, signer, edges):
    """A purged object's bytes in memory are never answered again: the replaced object is fetched anew."""
    key, body = put_object(stack, s3, 2000)
    url = sign(signer, edge, key)
    for _ in range(3):  # miss, hit, hit that keeps the bytes
        assert requests.get(url, timeout=10).content == body
    before = memory_hits(edge)
    assert requests.get(url, timeout=10).content == body
    assert memory_hits(edge) == before + 1
    _, new_body = put_object(stack, s3, 2000, key=key)
    r = requests.post(edge.url + "/_edge/purge", json={"keys": [key]},
                      headers={"X-FM-Edge-Secret": edges.purge_secret}, timeout=10)
    assert r.json() == {"purged": 1}
    misses = counters(edge)["misses"]
    for _ in range(3):
        r = requests.get(url, timeout=10)
        assert r.status_code == 200 and r.content == new_body
    assert counters(edge)["misses"] == misses + 1


def test_memory_tier_stays_under_its_cap(stack, s3, edges, signer):
    edge = edges.start(FM_EDGE_MEMORY_BYTES="10000", FM_EDGE_MEMORY_OBJECT_MAX="8000")
    objects = [put_object(stack, s3, 4000) for _ in range(3)]
    urls = [sign(signer, edge, k) for k, _ in objects]
    for url, (_, body) in zip(urls, objects):
        for _ in range(3):  # miss, hit, then the hit that keeps the bytes
            assert requests.get(url, timeout=10).content == body
    # (a new edge: its gauges read 0 until they refresh after these loads)
    assert wait_for(lambda: metric(edge, "fm_edge_memory_bytes") == 8000 and
                    metric(edge, "fm_edge_memory_objects") == 2, 10), memory_gauges(edge)
    assert metric(edge, "fm_edge_memory_loads_total") == 3
    before = memory_hits(edge)
    for url, (_, body) in zip(urls[1:], objects[1:]):  # the two most recent are in memory
        assert requests.get(url, timeout=10).content == body
    assert memory_hits(edge) == before + 2 and metric(edge, "fm_edge_memory_loads_total") == 3
    # The oldest was dropped: its next hit reads it from the disk again (and keeps it, dropping the next oldest).
    assert requests.get(urls[0], timeout=10).content == objects[0][1]
    assert metric(edge, "fm_edge_memory_loads_total") == 4
    # still two objects within the cap after the swap (a gauge refresh later; the loads counter above proves the swap)
    time.sleep(1.5)
    assert wait_for(lambda: metric(edge, "fm_edge_memory_bytes") == 8000 and
                    metric(edge, "fm_edge_memory_objects") == 2, 10), memory_gauges(edge)
    edges.stop(edge)

    off = edges.start(FM_EDGE_MEMORY_BYTES="0")
    url = sign(signer, off, objects[0][0])
    for _ in range(4):
        assert requests.get(url, timeout=10).content == objects[0][1]
    assert memory_hits(off) == 0 and counters(off)["hits"] == 3
    edges.stop(off)


def test_disk_eviction_drops_the_memory_copy(stack, s3, edges, signer):
    edge = edges.start(FM_EDGE_CACHE_MAX_BYTES=str(1 << 20), FM_EDGE_MEMORY_OBJECT_MAX=str(512 * 1024))
    objects = [put_object(stack, s3, 400 * 1024) for _ in range(4)]
    for k, body in objects:
        url = sign(signer, edge, k)
        for _ in range(3):
            assert requests.get(url, timeout=10).content == body
    # two of the four 400 KiB objects fit the 1 MiB cap; the new edge's gauges read 0 until they refresh after these
    assert wait_for(lambda: 2 * 400 * 1024 <= metric(edge, "fm_edge_cache_bytes") <= 1 << 20, 10), \
        metric(edge, "fm_edge_cache_bytes")
    assert metric(edge, "fm_edge_memory_objects") <= metric(edge, "fm_edge_cache_objects")
    assert metric(edge, "fm_edge_memory_bytes") <= metric(edge, "fm_edge_cache_bytes")
    misses = counters(edge)["misses"]
    assert requests.get(sign(signer, edge, objects[0][0]), timeout=10).content == objects[0][1]
    assert counters(edge)["misses"] == misses + 1  # evicted from the disk: not answered from memory either
    edges.stop(edge)


def test_hits_from_memory_race_purges_safely(stack, s3, edge, signer, edges):
    """Answers in flight keep their bytes while purges drop the index's copy (run under ASan too)."""
    key, body = put_object(stack, s3, 3000)
    url = sign(signer, edge, key)
    assert requests.get(url, timeout=10).content == body
    stop = threading.Event()
    bad = []

    def reader():
        with requests.Session() as session:
            while not stop.is_set():
                r = session.get(url, timeout=10)
                if r.status_code != 200 or r.content != body:
                    bad.append((r.status_code, len(r.content)))

    def purger():
        with requests.Session() as session:
            for _ in range(40):
                session.post(edge.url + "/_edge/purge", json={"keys": [key]},
                             headers={"X-FM-Edge-Secret": edges.purge_secret}, timeout=10)
                time.sleep(0.02)

    before = memory_hits(edge)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        readers = [pool.submit(reader) for _ in range(4)]
        pool.submit(purger).result()
        stop.set()
        for f in readers:
            f.result()
    assert not bad, bad[:5]
    assert memory_hits(edge) > before  # the race was with bytes in memory, not only with the disk
    assert edge.proc.poll() is None
