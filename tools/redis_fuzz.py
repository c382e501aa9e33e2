"""Random fuzz of ``RedisBackend`` against a real Redis (a development tool; the suite runs a
short version, ``tests/test_redis_fuzz.py``).

Two or three backend instances of one name, random acquires (single and bursts, every lane,
short timeouts), releases and cancellations, ``set_limit`` up and down on every instance,
and simulated Redis failures (the script raising before it runs, raising after it ran, or
hanging past ``command_timeout``) with recoveries. After every step it checks that

* (a) with every instance global, requests running <= C + the instances' debt (requests
  running without a lease); at any time running <= C + the fallback limits (not once
  ``open`` mode was seen); every seat a global instance holds is a live lease in Redis; the
  live leases never grow while over C;
* (b) no counter goes negative and ``stats().active`` covers the permits held;
* (c) no acquire outlives its timeout by more than 0.15 s;

and at the end that every instance is global with every counter back at zero, the live
leases equal what the instances hold, and ``aclose()`` leaves no key. Written by a reviewer
in the third session; 720 runs of 300 steps (seeds 100-219 and 1000-1119, each policy)
found nothing after the fixes of that session.

    .venv/bin/python tools/redis_fuzz.py SEED_FROM SEED_TO [local|closed|open ...]
    (environment: STEPS=300, SLACK=0.15, VERBOSE=1, LOCKGATE_REDIS_URL; keys under
    ``{lockgate-fuzz:*}``, deleted after each run; exit status 1 if a run broke an
    invariant. ``tests/test_redis_fuzz.py`` runs a short version in the suite.)

It reaches into the backend's private state on purpose: that is what it checks.
"""
# ruff: noqa
import asyncio
import os
import random
import sys
import time
import traceback
import uuid

import redis
import redis as r

from lockgate import GateSettings, LanesSettings, Priority
from lockgate._exceptions import DeadlineUnreachable, QueueFull, QueueTimeout, SystemOverload
from lockgate.backends.redis import RedisBackend

URL = os.environ.get("LOCKGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = "lockgate-fuzz"
OPEN = {l: {"share": 1.0, "lendable": 1.0, "borrow_limit": None} for l in ("critical","high","normal","low")}
N = Priority.NORMAL
def settings(limit, lanes=None, **kw):
    kw.setdefault("queue_capacity", 50); kw.setdefault("wait_timeout", 5.0); kw.setdefault("target_wait", None)
    return GateSettings(max_concurrent=limit, lanes=LanesSettings.model_validate(lanes or OPEN), **kw)
def name(): return "t" + uuid.uuid4().hex[:8]
def make(nm, s, **kw):
    kw.setdefault("lease_ttl", 3.0); kw.setdefault("key_prefix", PREFIX); kw.setdefault("command_timeout", 0.25)
    return RedisBackend(URL, nm, settings=s, **kw)
rc = redis.Redis.from_url(URL, decode_responses=True)
LIVE = """local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {} for i = 1, #KEYS do out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf') end return out"""
def live(nm): return rc.eval(LIVE, 4, *[f"{{{PREFIX}:{nm}}}:seats:{i}" for i in range(4)])
def keys(nm): return sorted(rc.scan_iter(match=f"{{{PREFIX}:{nm}}}*"))
def cleanup(nm):
    k = keys(nm)
    if k: rc.delete(*k)
    return k
async def settle(*bs):
    for _ in range(3):
        for b in bs: await asyncio.wait_for(b.settled(), 2)
        await asyncio.sleep(0.02)


STATS = {}
STEPS = int(os.environ.get("STEPS", 300))
SLACK = float(os.environ.get("SLACK", 0.15))  # seconds an acquire may outlive its timeout
VERBOSE = os.environ.get("VERBOSE")
FAST_ONLY = os.environ.get("FAST_ONLY")


def wrap(state, i, real):
    async def f(*a, **k):
        st = state[i]
        if st == "raise":
            raise r.ConnectionError("sim")
        if st == "after":  # the script ran, its answer is lost
            await real(*a, **k)
            raise r.ConnectionError("sim after")
        if st == "hang":  # cancelled by command_timeout, never sent
            await asyncio.sleep(30)
        return await real(*a, **k)
    return f


async def run(seed, policy, steps=STEPS):
    rnd = random.Random(seed)
    n = rnd.choice([2, 3])
    C = rnd.choice([3, 5, 8, 10])
    lanes = None if rnd.random() < 0.5 else OPEN
    s = settings(C, lanes, queue_capacity=rnd.choice([2, 5, 20]), wait_timeout=0.3)
    expected = n if rnd.random() < 0.7 else None
    nm = name()
    cmd_to = 0.1
    fast = rnd.random() < 0.8 or FAST_ONLY
    bs = [make(nm, s, fastpath=fast, expected_instances=expected, heartbeat=0.1, lease_ttl=rnd.choice([0.5, 1.5]),
               block=rnd.choice([1, 2, None]), linger=rnd.choice([None, 0, 0.05]),
               on_redis_error=policy, command_timeout=cmd_to) for _ in range(n)]
    viol = []
    def bad(kind, msg):
        viol.append((kind, msg))
        if VERBOSE:
            print("VIOL", seed, policy, kind, msg, flush=True)
    for b in bs:
        await b.start()
    state = ["ok"] * n
    reals = [b._script for b in bs]
    for i, b in enumerate(bs):
        b._script = wrap(state, i, reals[i])
    held = [[] for _ in range(n)]
    tasks = []
    limits = {"C": C, "over": False, "ever_open": False, "lowered_recent": False}

    def running():
        return sum(map(len, held))

    def fb_sum():
        return sum(b._fallback_limit() for b in bs)

    def check_admit(i, p):
        tot = running()
        Cn = limits["C"]
        modes = [b.mode for b in bs]
        if "open" in modes:
            limits["ever_open"] = True
        if limits["over"]:
            return
        if not limits["ever_open"] and tot > Cn + fb_sum():
            bad("a2", f"step {stepno[0]} running {tot} > C {Cn} + fallback {fb_sum()} modes {modes}")
        if all(m == "global" for m in modes):
            debt = sum(sum(b._debt) for b in bs)
            carried = sum(sum(b._carried) for b in bs)
            lost = sum(b.counters["lost_leases"] for b in bs)
            if tot > Cn + debt:
                bad("a1", f"step {stepno[0]} all global: running {tot} > C {Cn} + debt {debt} (carried {carried}) "
                          f"lost_leases={lost} leased={[b.leased for b in bs]} live={live(nm)}")

    async def acq(i, lane, timeout):
        t0 = time.monotonic()
        try:
            p = await bs[i].acquire(lane, timeout)
        except (QueueTimeout, QueueFull, SystemOverload, DeadlineUnreachable) as e:
            p = None
        except asyncio.CancelledError:
            return
        except Exception as e:
            bad("exc", f"acquire raised {e!r}")
            return
        finally:
            el = time.monotonic() - t0
            if el > timeout + SLACK:
                bad("c", f"step {stepno[0]} acquire waited {el:.3f}s for timeout {timeout} (inst {i} mode {bs[i].mode})")
        if p is not None:
            held[i].append(p)
            STATS["adm_" + bs[i].mode] = STATS.get("adm_" + bs[i].mode, 0) + 1
            STATS["maxrun"] = max(STATS.get("maxrun", 0), running() - limits["C"])
            d = sum(sum(b._debt) for b in bs)
            if d: STATS["adm_with_debt"] = STATS.get("adm_with_debt", 0) + 1
            check_admit(i, p)

    stepno = [0]
    try:
        for step in range(steps):
            stepno[0] = step
            i = rnd.randrange(n)
            op = rnd.random()
            if op < 0.38:
                tasks.append(asyncio.create_task(
                    acq(i, Priority(rnd.randrange(4)), rnd.choice([0.05, 0.1, 0.3, 0.6]))))
            elif op < 0.42:
                for _ in range(rnd.randrange(2, 8)):
                    tasks.append(asyncio.create_task(
                        acq(rnd.randrange(n), Priority(rnd.randrange(4)), rnd.choice([0.05, 0.3, 0.6]))))
            elif op < 0.78:
                if held[i]:
                    held[i].pop(rnd.randrange(len(held[i]))).release()
            elif op < 0.83:
                live_t = [t for t in tasks if not t.done()]
                if live_t:
                    rnd.choice(live_t).cancel()
            elif op < 0.93:
                if state[i] == "ok":
                    state[i] = rnd.choice(["raise", "raise", "after", "hang"])
                else:
                    state[i] = "ok"
                bs[i]._wake.set()
            elif op < 0.945:
                st = rnd.choice(["raise", "after", "hang", "ok"])
                for j in range(n):
                    state[j] = st
                    bs[j]._wake.set()
            elif op < 0.96:
                newC = rnd.choice([3, 5, 8, 10, 12])
                if newC < limits["C"]:
                    limits["over"] = True
                limits["C"] = newC
                limits["lowered_recent"] = True
                for b in bs:
                    b.set_limit(newC)
            # (else: nothing)
            await asyncio.sleep(rnd.choice([0, 0, 0.001, 0.01, 0.03, 0.08]))
            tasks = [t for t in tasks if not t.done()]
            # per-step invariants
            if limits["over"] and running() <= limits["C"]:
                limits["over"] = False
            for j, b in enumerate(bs):
                st = b.stats()
                if st.active < len(held[j]):
                    bad("b", f"step {step} inst {j} stats.active {st.active} < held {len(held[j])}")
                if min(b._debt) < 0 or min(b._carried) < 0 or b._local.stats().active < 0:
                    bad("b", f"step {step} inst {j} negative counter debt {b._debt} carried {b._carried}")
            for j, b in enumerate(bs):
                if b.mode == "global":
                    for lane in range(4):
                        mine = set(b._idle[lane]) | set(b._busy[lane])
                        alive = set(rc.zrangebyscore(f"{{{PREFIX}:{nm}}}:seats:{lane}", int(rc.time()[0]*1000 + rc.time()[1]//1000), "+inf"))
                        if mine - alive:
                            bad("a3", f"step {step} inst {j} global holds seats not live in Redis lane {lane}: {sorted(mine - alive)} busy={len(b._busy[lane])}")
            lv = sum(live(nm))
            if lv > limits["C"] and lv > limits.get("prev_lv", 0) and not limits["lowered_recent"]:
                bad("a0", f"step {step} live leases {lv} > C {limits['C']} (prev {limits.get('prev_lv')}) modes {[b.mode for b in bs]}")
            limits["prev_lv"] = lv
            limits["lowered_recent"] = False
        # ---- the end: Redis back, everything finishes
        for j in range(n):
            state[j] = "ok"
            bs[j]._wake.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        for j in range(n):
            for p in held[j]:
                p.release()
            held[j].clear()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if all(b.mode == "global" for b in bs):
                break
        await settle(*bs); await asyncio.sleep(0.3); await settle(*bs)
        for j, b in enumerate(bs):
            st = dict(mode=b.mode, debt=b._debt, kept=[len(k) for k in b._kept], carried=b._carried,
                      shadows=[len(x) for x in b._shadows], local_active=b._local.stats().active,
                      local_queued=b._local.stats().queued,
                      busy=sum(len(x) for x in b._busy), active=b.stats().active, limbo=b._limbo,
                      queued=b._queued_total, arrivals=len(b._arrivals), returns=b._returns)
            okv = dict(mode="global", debt=[0]*4, kept=[0]*4, carried=[0]*4, shadows=[0]*4,
                       local_active=0, local_queued=0, busy=0, active=0, limbo=[], queued=0,
                       arrivals=0, returns=[])
            if st != okv:
                bad("b-end", f"inst {j} {({k: v for k, v in st.items() if okv[k] != v})}")
        lv = live(nm)
        own = [sum(b.leased) for b in bs]
        if sum(lv) != sum(own):
            bad("b-end", f"live leases {lv} != leased by instances {own}")
    except Exception:
        bad("harness", traceback.format_exc())
    finally:
        for j, b in enumerate(bs):
            b._script = reals[j]
        for t in tasks:
            t.cancel()
        for b in bs:
            for k in ("mode_switches", "lost_leases", "calls"):
                STATS[k] = STATS.get(k, 0) + b.counters[k]
        for b in bs:
            await b.aclose()
        left = keys(nm)
        if left:
            bad("b-close", f"keys left after aclose {left} live {live(nm)}")
        cleanup(nm)
    return viol


async def main():
    a, b = int(sys.argv[1]), int(sys.argv[2])
    policies = sys.argv[3:] or ["local", "closed", "open"]
    total = failed = 0
    for seed in range(a, b):
        for policy in policies:
            v = await run(seed, policy)
            total += 1
            if v:
                failed += 1
                kinds = sorted({k for k, _ in v})
                print(seed, policy, "VIOLATIONS", kinds, v[:3], flush=True)
    print(STATS)
    print("done", total, "runs", STEPS, "steps each", flush=True)
    return failed

if __name__ == "__main__":
    sys.exit(1 if asyncio.run(main()) else 0)
