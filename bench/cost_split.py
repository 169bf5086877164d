"""Where the bridge's CPU goes in ``bench/run.py``'s cost phase, and the per-event figure with
the inbound backlog's own work taken out.

Issue 18's target is "CPU per event flat (within 10%) from 10 to 100,000 mappings and outbox
rows and with 200,000 inbound rows waiting". The raw figure (the bridge's CPU over the load
window divided by the events sent) also counts the work the backlog does for itself in that
window: taking X's events into the store and posting the waiting rows to Slack. Two ways to
see the relay's own cost beside it:

- an idle window (no events sent) of the same length just before the load: its CPU per second is
  what the backlog (and the bridge's own timers) cost; the load's CPU less that rate times the
  load's span, per event, is the "net" figure;
- py-spy on the bridge during each window (``--profile-cost``), its samples split by what they
  were doing (``category``): the relay path, the take, the poster, the poll, upkeep, other.

Both are printed beside the raw figure, never in its place.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The first marker found in a stack (innermost frame first) names its category: (a fragment of
# the frame's path, of its function). A store call runs on the SQLite thread with the role's own
# function on its stack, so the role's function names the work there too.
_MARKERS: tuple[tuple[str, str, str], ...] = (
    ("store/inbound.py", "_take_some", "take"),
    ("store/inbound.py", "_plan_one", "take"),
    ("store/inbound.py", "_take_row", "take"),
    ("store/inbound.py", "take_inbound", "take"),
    ("store/inbound.py", "inbound_heads", "poster"),
    ("store/inbound.py", "mark_post", "poster"),
    ("store/inbound.py", "reschedule_inbound", "poster"),
    ("store/inbound.py", "hold_channel", "poster"),
    ("store/inbound.py", "set_inbound_payload", "poster"),
    ("store/inbound.py", "sent_from", "poster"),
    ("bridge/poster.py", "", "poster"),
    ("bridge/inbound.py", "_poll", "poll"),
    ("bridge/inbound.py", "", "inbound other"),
    ("bridge/relay.py", "", "relay"),
    ("bridge/delivery.py", "", "relay"),
    ("bridge/feedback.py", "", "relay"),
    ("store/relay.py", "", "relay"),
    ("store/outbox.py", "", "relay"),
    ("slack/app.py", "", "relay"),
    ("web/app.py", "slack_events", "relay"),
    ("slack_bolt/", "", "relay"),
    ("bridge/retention.py", "", "upkeep"),
    ("store/upkeep.py", "", "upkeep"),
    ("aiohttp/web_protocol.py", "", "http server"),
)
# Not CPU: the event loop waiting for work, and a transaction's BEGIN/COMMIT waiting for SQLite's
# lock or the disk (synchronous = FULL). py-spy samples them as busy; they are kept apart.
WAITS = ("idle", "begin/commit")


def category(frames: Sequence[str]) -> str:
    """What one sampled stack (raw py-spy frames, outermost first) was doing."""
    if frames[-1].startswith("EpollSelector.select "):
        return "idle"
    if (
        len(frames) >= 2
        and frames[-1].startswith("Database.execute ")
        and frames[-2].startswith("_immediate ")
    ):
        return "begin/commit"
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        for path, func, label in _MARKERS:
            if path in where and func in name:
                return label
    return "other"


def short(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'dir/file.py:func'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    keep = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{keep}:{name}"


def split(raw: Path) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """Samples per category of a ``py-spy record --format raw`` file (idle threads not
    sampled), and per (category, innermost frame)."""
    counts: Counter[str] = Counter()
    leaves: Counter[tuple[str, str]] = Counter()
    if not raw.exists():  # py-spy failed (it says why on its stderr)
        return counts, leaves
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")[1:]
        if frames:
            name = category(frames)
            counts[name] += int(count_text)
            leaves[(name, short(frames[-1]))] += int(count_text)
    return counts, leaves


def cpu_shares(counts: Counter[str]) -> dict[str, float]:
    """Each working category's share of the samples that were not waits."""
    busy = {name: n for name, n in counts.items() if name not in WAITS}
    total = sum(busy.values())
    return {name: n / total for name, n in busy.items()} if total else {}


def split_line(counts: Counter[str], cpu_s: float, events: int) -> str:
    """The window's CPU shared out by the samples that were not waits: µs per event of each."""
    total = sum(counts.values())
    if not total:
        return "(no samples)"
    per_event = cpu_s / max(1, events) * 1e6
    shares = cpu_shares(counts)
    parts = [
        f"{name} {share:.0%} ({per_event * share:.0f} µs/event)"
        for name, share in sorted(shares.items(), key=lambda kv: -kv[1])
    ]
    waits = ", ".join(f"{name} {counts[name] / total:.0%}" for name in WAITS if counts[name])
    return ", ".join(parts) + (f" [of all samples, not CPU: {waits}]" if waits else "")


@dataclass
class Window:
    """One measured window of a cost run: the bridge's CPU and the backlog's progress in it."""

    seconds: float
    cpu_s: float
    posts: int = 0  # chat.postMessage calls the fake Slack answered
    taken: int = 0  # inbound rows written (by the rows' ids)
    samples: Counter[str] | None = None  # py-spy's samples by category, when profiled


@dataclass
class UnitCosts:
    """The backlog's CPU per unit of its own work, from an idle window (no events sent)."""

    base_per_s: float  # the bridge's timers and loop with nothing to do (10 mappings, idle)
    per_row: float  # seconds of CPU per inbound row taken
    per_post: float  # seconds of CPU per Slack post
    how: str


def unit_costs(idle: Window, base_per_s: float) -> UnitCosts | None:
    """What a taken row and a post cost, from the idle window's CPU above ``base_per_s``.

    With py-spy's samples of the window, the share spent relaying (deliveries left over from the
    load before, their acks) is left out first, and the rest is shared between the take and the
    poster by their samples (the unattributed rest, such as the event loop and statements run
    outside a role's transaction, in the same proportion). Without samples, all of it goes to the
    one kind of work done, and the costs are unknown (None) when both were done."""
    if not idle.taken and not idle.posts:
        return UnitCosts(base_per_s, 0.0, 0.0, "no backlog work in the idle window")
    cpu = idle.cpu_s
    take = post = 0.0
    if idle.samples is not None:
        shares = cpu_shares(idle.samples)
        cpu *= 1.0 - shares.get("relay", 0.0) - shares.get("http server", 0.0)
        take = shares.get("take", 0.0) + shares.get("poll", 0.0)
        post = shares.get("poster", 0.0)
    excess = max(0.0, cpu - base_per_s * idle.seconds)
    if not idle.posts:
        return UnitCosts(base_per_s, excess / idle.taken, 0.0, "the excess to the take")
    if not idle.taken:
        return UnitCosts(base_per_s, 0.0, excess / idle.posts, "the excess to the posts")
    if not take + post:
        return None
    return UnitCosts(
        base_per_s,
        excess * take / (take + post) / idle.taken,
        excess * post / (take + post) / idle.posts,
        "the excess shared by py-spy's take and poster samples",
    )


def net_us_per_event(load: Window, costs: UnitCosts, events: int) -> float:
    """CPU per event with the backlog's own work in the load window taken out, at its idle cost."""
    backlog = costs.base_per_s * load.seconds + costs.per_row * load.taken + costs.per_post * load.posts
    return (load.cpu_s - backlog) / max(1, events) * 1e6
