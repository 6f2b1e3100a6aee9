"""Section 6 of ``signup bench``: offered load beyond capacity — what the API admits, sheds and delivers.

The capacity is the argon2id hashing rate measured in this run with one thread per core (what the API can
at best sign up). The whole stack (api, relay, worker) takes 1x, 2x and 5x that for ``overload_s`` each.
Goodput is accepted signups per second; a shed answer is a ``503`` with ``Retry-After``; every accepted
signup must get its email.

The load generator, the stack and PostgreSQL share the cores, so the section also reports the hashing rate
measured again while the stack idles alongside, before the first load and after each one (goodput against
the mean of the two that bracket its load: the machine's speed drifts within a run by more than the target's
10 %), and where the CPU went at each load (``lab.harness.cpu``: the API's event loop and hashing threads,
relay, worker, Redis, PostgreSQL, the generator, the rest of the machine). Before the loads it measures what
the whole stack serves at saturation (a closed loop of three clients per hashing slot): the most goodput
admission could keep, since the relay, the worker, PostgreSQL, Redis, the SMTP sink and the generator share
the cores with the hashing. The generator is ``generate_load(cheap=True)``: requests encoded before the
clock starts, only the status read back.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from lab.bench.e2e import first_emails, hashing_bound
from lab.bench.model import BenchPlan, Section, fmt, ms, ratio
from lab.harness.cpu import PARTS, cpu_shares, cpu_snapshot
from lab.harness.load import Signup, generate_load, saturate
from lab.harness.measure import latency_of
from lab.harness.stack import PRODUCTION_ADMISSION, Stack

MULTIPLES = (1, 2, 5)
SATURATING_CLIENTS_PER_SLOT = 3
CLIENT_TIMEOUT_S = 30.0


def _goodput(signups: list[Signup], duration_s: float) -> float:
    """Accepted signups per second over the offered window (or longer, if answers came after it)."""
    accepted = [s for s in signups if s.accepted]
    if not accepted:
        return 0.0
    span = max(duration_s, max(s.committed_at for s in accepted) - min(s.sent_at for s in signups))
    return len(accepted) / span


def _row(
    multiple: int,
    rate: float,
    signups: list[Signup],
    capacity: float,
    unmailed: int,
    plan: BenchPlan,
    beside_stack: float,
    saturated: float,
) -> list[str]:
    accepted = latency_of(s.committed_at - s.sent_at for s in signups if s.accepted)
    shed = [s for s in signups if s.status == 503]
    shed_latency = latency_of(s.committed_at - s.sent_at for s in shed)
    other = sum(1 for s in signups if s.status not in (200, 503))
    goodput = _goodput(signups, plan.overload_s)
    return [
        f"{multiple}x",
        f"{rate:.1f}",
        str(len(signups)),
        str(sum(1 for s in signups if s.accepted)),
        str(len(shed)),
        str(other),
        f"{goodput:.2f}",
        fmt(ratio(goodput, capacity)),
        fmt(accepted.p50),
        fmt(accepted.p99),
        ms(shed_latency.p99),
        str(sum(1 for s in shed if not s.retry_after)),
        str(unmailed),
        fmt(ratio(goodput, beside_stack)),
        fmt(ratio(goodput, saturated)),
    ]


async def overload_section(*, capacity: float, plan: BenchPlan, work_dir: Path, pg: str) -> Section:
    """Section 6: the stack at 1x, 2x and 5x ``capacity`` signups/s, one after the other."""
    rows, cpu = [], {}
    async with Stack(
        work_dir=work_dir / "overload",
        services=("api", "relay", "worker"),
        env=PRODUCTION_ADMISSION,
        pg_admin_url=pg,
    ) as stack:
        beside = [(await asyncio.to_thread(hashing_bound, plan.hash_samples))[2]]
        saturated = await _saturated_rate(stack, plan)
        for multiple in MULTIPLES:
            rate = multiple * capacity
            before, started = cpu_snapshot(stack), time.monotonic()
            signups = await generate_load(
                stack.api_url,
                rate=rate,
                duration_s=plan.overload_s,
                prefix=f"x{multiple}",
                timeout_s=CLIENT_TIMEOUT_S,
                cheap=True,
            )
            cpu[multiple] = cpu_shares(before, cpu_snapshot(stack), time.monotonic() - started)
            accepted = [s for s in signups if s.accepted]
            mailed = await first_emails(stack, accepted, within_s=60)
            unmailed = sum(1 for s in accepted if s.username not in mailed)
            beside.append((await asyncio.to_thread(hashing_bound, plan.hash_samples))[2])  # idle again
            bracket = (beside[-2] + beside[-1]) / 2
            rows.append(_row(multiple, rate, signups, capacity, unmailed, plan, bracket, saturated))
    by_multiple = {row[0]: row for row in rows}
    figures = {
        "capacity_per_s": capacity,
        **{f"goodput_over_capacity_{m}x": _float(by_multiple[f"{m}x"][7]) for m in MULTIPLES},
        "accepted_p99_s_5x": _float(by_multiple["5x"][9]),
        "shed_p99_ms_5x": _float(by_multiple["5x"][10]),
        "accepted_without_email": float(sum(int(row[12]) for row in rows)),
        "capacity_beside_idle_stack_per_s": beside[0],
        **{
            f"capacity_beside_idle_stack_after_{m}x_per_s": rate
            for m, rate in zip(MULTIPLES, beside[1:], strict=True)
        },
        **{f"goodput_over_idle_stack_capacity_{m}x": _float(by_multiple[f"{m}x"][13]) for m in MULTIPLES},
        "stack_saturated_per_s": saturated,
        **{f"goodput_over_stack_saturated_{m}x": _float(by_multiple[f"{m}x"][14]) for m in MULTIPLES},
        **{f"cpu_{_key(part)}_{m}x": share for m in MULTIPLES for part, share in cpu[m].items()},
    }
    return Section(
        key="overload",
        title=f"6. Overload at 1x, 2x, 5x hashing capacity ({capacity:.1f}/s), {plan.overload_s:g} s each",
        headers=[
            "offered",
            "rate /s",
            "sent",
            "accepted",
            "shed 503",
            "other",
            "goodput /s",
            "of capacity",
            "accepted p50 s",
            "accepted p99 s",
            "shed p99 ms",
            "503 without Retry-After",
            "accepted without email",
            "of capacity beside the idle stack, before and after",
            "of the stack's rate at saturation",
        ],
        rows=rows,
        figures=figures,
        notes=[
            "Capacity: argon2id hashes/s measured in this run with one thread per core. Targets: goodput "
            "within 10 % of capacity at 2x and 5x; accepted p99 ≤ 2 s at 5x; shed answers within 50 ms "
            "p99; 0 accepted signups without their email.",
            f"Latency is the client's (request sent → answer); a client gives up after "
            f"{CLIENT_TIMEOUT_S:g} s (counted under other). The API runs with its default admission: one "
            "slot per CPU, a wait queue of what the slots finish in API_SIGNUP_MAX_WAIT_MS = 1 s.",
            "Capacity beside the idle stack: the same hashing measured again with the stack started and "
            "idle, before the first load and after each load once its emails were sent ("
            + ", ".join(f"{rate:.1f}/s" for rate in beside)
            + "); the column after the emails is goodput against the mean of the two measurements around "
            "its load.",
            f"The stack's rate at saturation: {saturated:.2f} signups/s accepted with "
            f"{SATURATING_CLIENTS_PER_SLOT} clients per hashing slot, each sending its next signup when the "
            f"last was answered, for {plan.overload_s / 2:g} s before the first load (the same cheap "
            "client, all its emails sent before the loads begin): what the whole stack serves on these "
            "cores when nothing is shed, the API, relay, worker, PostgreSQL, Redis, the SMTP sink and the "
            "generator each taking their CPU. The last column is goodput against it: what admission keeps "
            "of the most the stack can serve.",
            "CPU, as shares of all cores while each load ran (user + system, from /proc): "
            + "; ".join(
                f"{m}x: " + ", ".join(f"{part} {share:.0%}" for part, share in cpu[m].items())
                for m in MULTIPLES
            )
            + ". api loop = the API's event loop thread; api hashing = its other threads (argon2id); "
            "postgres = the stack database's backends; generator = the benchmark's event loop sending the "
            "load; bench other = its SMTP sink; rest = everything else on the machine (other users "
            "included).",
        ],
    )


async def _saturated_rate(stack: Stack, plan: BenchPlan) -> float:
    """Accepted signups/s with a closed loop just deep enough to keep every hashing slot busy."""
    clients = SATURATING_CLIENTS_PER_SLOT * (os.cpu_count() or 1)
    signups = await saturate(
        stack.api_url, concurrency=clients, duration_s=plan.overload_s / 2, prefix="sat", cheap=True
    )
    accepted = [s for s in signups if s.accepted]
    await first_emails(stack, accepted, within_s=60)  # its emails are not the first load's work
    return _goodput(signups, plan.overload_s / 2)


def _key(part: str) -> str:
    return part.replace(" ", "_")


assert len(PARTS) == len({_key(part) for part in PARTS})


def _float(cell: str) -> float | None:
    return None if cell == "-" else float(cell)


def chart(section: Section, path: Path) -> Path | None:
    """Goodput and accepted p99 against offered load, as a PNG; None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    offered = [float(row[1]) for row in section.rows]
    goodput = [float(row[6]) for row in section.rows]
    p99 = [_float(row[9]) or 0.0 for row in section.rows]
    capacity = section.figures["capacity_per_s"] or 0.0
    figure, left = plt.subplots(figsize=(7, 4))
    left.plot(offered, goodput, "o-", label="goodput (accepted/s)")
    left.axhline(capacity, linestyle=":", color="grey", label="hashing capacity")
    left.axhline(0.9 * capacity, linestyle="--", color="lightgrey", label="target: 90 % of it")
    saturated = section.figures.get("stack_saturated_per_s")
    if saturated:
        left.axhline(saturated, linestyle="-.", color="tab:green", label="the stack at saturation")
    left.set_ylim(bottom=0)  # from zero: a cropped axis makes a few percent look like a collapse
    left.set_xlabel("offered signups/s")
    left.set_ylabel("signups/s")
    right = left.twinx()
    right.plot(offered, p99, "s--", color="tab:red", label="accepted p99 (s)")
    right.set_ylabel("accepted p99 latency (s)")
    right.set_ylim(bottom=0)
    left.legend(
        handles=left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0], loc="lower right"
    )
    left.set_title("signup API under overload (signup bench, section 6)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
