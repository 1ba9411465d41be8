"""Years of ticket history as columns: mostly closed tickets, a recent open backlog, a few due.

The closed history (all but the open tickets) is drawn column by column with numpy, so a
million tickets take seconds; the open and due tickets are written one by one (`bench.backlog`).
A chunk maps each table to its columns: times are float seconds since the epoch (NaN for
none), JSON columns are already text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from bench.orgchart import Chart
from bench.settings import NOW

# a busy city: the closed history reaches back as far as this pace needs (a million: 6 years),
# so ten times the tickets means ten times the years, and the recent weeks look the same
CLOSED_PER_DAY = 450
SLOT_EPOCH = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
SOURCE_IDS = 1_000_000_000  # message ids of old reports stay clear of the double's own
H, D = 3600.0, 86400.0
NAN = float("nan")

TICKET_COLUMNS = (
    "id",
    "state",
    "region_id",
    "enterprise_id",
    "reporter_id",
    "department_id",
    "claimant_id",
    "suggested_department_id",
    "merged_into_id",
    "category",
    "summary",
    "text",
    "anonymous",
    "source_chat_id",
    "source_message_id",
    "group_chat_id",
    "card_message_id",
    "promised_date",
    "created_at",
    "assigned_at",
    "claimed_at",
    "supervised_at",
    "resolved_at",
    "closed_at",
    "due_at",
    "last_activity_at",
    "redo_count",
    "return_count",
    "rating",
    "version",
)
EVENT_COLUMNS = (
    "id",
    "ticket_id",
    "kind",
    "actor_id",
    "from_state",
    "to_state",
    "note",
    "data",
    "at",
)
NUDGE_COLUMNS = ("id", "ticket_id", "rung", "person_id", "slot", "at", "acted")
# a report names a site of the enterprise and a bureau's keyword: 12 x 40 x 4 summaries per
# bureau, as varied as real ones, so that similar reports are the exception
TROUBLES = (
    "{x}办理{k}手续进度缓慢，请协调", "{x}的{k}材料提交后一直没有回复", "咨询{x}{k}政策如何申请",
    "{x}{k}环节多次往返补件", "{x}{k}系统无法提交，窗口让等通知", "希望加快{x}{k}审核",
    "{x}因{k}问题停工三天", "{x}{k}标准不清楚，各部门说法不一", "{x}{k}费用明显偏高",
    "{x}{k}现场检查后无下文", "{x}申报{k}被退回，原因未说明", "{x}{k}办理超过承诺时限",
)  # fmt: skip
SITES = (
    "新建厂房", "二期扩建项目", "光伏车棚", "危化品仓库", "燃气锅炉", "稀土分离产线", "员工宿舍",
    "职工食堂", "研发中心", "物流园", "冷链仓储", "电解槽车间", "风机叶片车间", "乳品加工线",
    "污水处理站", "屋顶分布式光伏", "原料堆场", "检测实验室", "办公楼", "厂区变电站",
    "铸造车间", "储能电站", "牧场", "铁路专用线", "厂区道路", "氢能示范项目", "永磁材料产线",
    "铝型材车间", "化验室", "招聘会", "技术改造项目", "进口设备", "出口订单", "配套公寓",
    "停车场", "特种设备", "展厅", "实训基地", "消防设施", "供热管网",
)  # fmt: skip


def trouble(k: int, keyword: str) -> str:
    """The k-th way a report about `keyword` can read."""
    template = TROUBLES[k % len(TROUBLES)]
    return template.format(x=SITES[(k // len(TROUBLES)) % len(SITES)], k=keyword)


Columns = dict[str, Any]


def stamps(seconds: Any) -> np.ndarray:
    """Epoch seconds (NaN for none) as stored text, 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC:
    SQLAlchemy's SQLite DATETIME format (so stored values compare with bound ones), and what
    PostgreSQL's COPY reads in a UTC session. Formatted once per ticket time; events reuse it."""
    seconds = np.asarray(seconds, dtype=float)
    out = np.full(len(seconds), None, dtype=object)
    if not len(seconds):
        return out
    missing = np.isnan(seconds)
    micros = np.where(missing, 0, np.round(seconds * 1e6)).astype(np.int64)
    text = np.datetime_as_string(micros.view("datetime64[us]"), unit="us")
    text.view(np.uint32).reshape(len(text), -1)[:, 10] = ord(" ")  # 'T' -> ' '
    out[:] = text.tolist()
    out[missing] = None
    return out


@dataclass(frozen=True)
class Sizes:
    tickets: int
    open: int
    due: int


@dataclass
class Chunk:
    tickets: Columns
    events: Columns
    nudges: Columns


class Pools:
    """The chart as arrays: who can report, which bureaus serve a region, who works there."""

    def __init__(self, chart: Chart) -> None:
        ents = [(e, r) for r in chart.regions for e in chart.enterprises[r]]
        self.enterprise = np.array([e for e, _ in ents])
        self.region = np.array([r for _, r in ents])
        self.members = np.array([(chart.members[e] * 2)[:2] for e, _ in ents])
        bureaus = {r: chart.bureaus_for(r) for r in chart.regions}
        width = max(len(b) for b in bureaus.values())
        self.bureaus = np.zeros((max(chart.regions) + 1, width), dtype=np.int64)
        self.n_bureaus = np.zeros(max(chart.regions) + 1, dtype=np.int64)
        for r, b in bureaus.items():
            self.bureaus[r, : len(b)], self.n_bureaus[r] = b, len(b)
        top = max(chart.officials) + 1
        self.officials = np.zeros((top, 3), dtype=np.int64)
        ways = len(TROUBLES) * len(SITES)
        self.texts = np.empty((top, ways * 4), dtype=object)
        self.assign_json = np.empty(top, dtype=object)
        for d, people in chart.officials.items():
            self.officials[d] = people
            words = (chart.keywords[d] * 4)[:4]
            self.texts[d] = [trouble(k, w) for k in range(ways) for w in words]
            self.assign_json[d] = json.dumps({"department_id": d})
        self.group = np.zeros(max(chart.regions) + 1, dtype=np.int64)
        self.coordinator = np.zeros(max(chart.regions) + 1, dtype=np.int64)
        for r in chart.regions:
            self.group[r], self.coordinator[r] = chart.group_of[r], chart.coordinators[r]


def closed_history(
    pools: Pools,
    first_id: int,
    n: int,
    start: float,
    end: float,
    rng: np.random.Generator,
    first_event: int,
    first_nudge: int,
) -> Chunk:
    """n closed tickets created evenly from `start` to `end`, with their events and nudges."""
    tid = np.arange(first_id, first_id + n)
    created = start + (end - start) * (np.arange(n) + rng.random(n)) / n
    pick = rng.integers(0, len(pools.enterprise), n)
    ent, region = pools.enterprise[pick], pools.region[pick]
    reporter = pools.members[pick, rng.integers(0, 2, n)]
    dept = pools.bureaus[region, rng.integers(0, 1 << 30, n) % pools.n_bureaus[region]]
    official = pools.officials[dept, rng.integers(0, 3, n)]
    text = pools.texts[dept, rng.integers(0, pools.texts.shape[1], n)]
    fate = rng.random(n)
    gone, unrated = fate < 0.03, (fate >= 0.03) & (fate < 0.15)
    assigned = created + rng.uniform(300, 3 * H, n)
    claimed = assigned + rng.uniform(600, 8 * H, n)
    resolved = claimed + rng.uniform(2 * H, 8 * D, n)
    closed = np.where(
        unrated, resolved + 7 * D + rng.uniform(0, 2 * D, n), resolved + rng.uniform(H, 3 * D, n)
    )
    closed = np.where(gone, created + rng.uniform(600, 6 * H, n), closed)
    rating = np.where(rng.random(n) < 0.85, "satisfied", "basic").astype(object)
    rating[gone | unrated] = None
    kept = ~gone
    times = [stamps(t) for t in (created, assigned, claimed, resolved, closed)]
    t_created, t_assigned, t_claimed, t_resolved, t_closed = times
    kept_times = [_masked(t, kept) for t in (t_assigned, t_claimed, t_resolved)]
    none = np.full(n, None, dtype=object)
    source = SOURCE_IDS + tid
    tickets = {
        "id": tid,
        "state": np.where(gone, "withdrawn", "closed").astype(object),
        "region_id": region,
        "enterprise_id": ent,
        "reporter_id": reporter,
        "department_id": _masked(dept, kept),
        "claimant_id": _masked(official, kept),
        "suggested_department_id": none,
        "merged_into_id": none,
        "category": none,
        "summary": text,
        "text": text,
        "anonymous": np.zeros(n, dtype=bool),
        "source_chat_id": pools.group[region],
        "source_message_id": source,
        "group_chat_id": pools.group[region],
        "card_message_id": source,
        "promised_date": none,
        "created_at": t_created,
        "assigned_at": kept_times[0],
        "claimed_at": kept_times[1],
        "supervised_at": none,
        "resolved_at": kept_times[2],
        "closed_at": t_closed,
        "due_at": stamps(np.where(kept, assigned + 7 * D, NAN)),
        "last_activity_at": t_closed,
        "redo_count": np.zeros(n, dtype=np.int64),
        "return_count": np.zeros(n, dtype=np.int64),
        "rating": rating,
        "version": np.where(gone, 2, 6),
    }
    events = _events(
        pools,
        tid,
        reporter,
        region,
        dept,
        official,
        gone,
        unrated,
        rating,
        times,
        rng,
        first_event,
    )
    reminded = kept & (rng.random(n) < 0.25)
    at = assigned[reminded] + 2 * H
    nudges = {
        "id": np.arange(first_nudge, first_nudge + int(reminded.sum())),
        "ticket_id": tid[reminded],
        "rung": np.full(len(at), "unclaimed", dtype=object),
        "person_id": official[reminded],
        "slot": ((at - SLOT_EPOCH) // 60).astype(np.int64),
        "at": stamps(at),
        "acted": np.ones(len(at), dtype=bool),
    }
    return Chunk(tickets, events, nudges)


def _masked(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = values.astype(object)
    out[~keep] = None
    return out


def _events(
    pools: Pools,
    tid,
    reporter,
    region,
    dept,
    official,
    gone,
    unrated,
    rating,
    times,
    rng: np.random.Generator,
    first_id: int,
) -> Columns:
    """Five events a closed ticket (report … rate or autoclose), two a withdrawn one."""
    n = len(tid)
    created, assigned, claimed, resolved, closed = times
    by_coordinator = rng.random(n) < 0.4
    coordinator = np.where(by_coordinator, pools.coordinator[region], 0).astype(object)
    coordinator[~by_coordinator] = None
    rate = np.array([json.dumps({"rating": r}) if r else "{}" for r in ("satisfied", "basic")])
    close_kind = np.where(gone, "withdraw", np.where(unrated, "autoclose", "rate"))
    close_actor = np.where(unrated, None, reporter.astype(object))
    close_from = np.where(gone, "reported", "resolved")
    close_to = np.where(gone, "withdrawn", "closed")
    close_data = np.where(unrated | gone, "{}", np.where(rating == "basic", rate[1], rate[0]))
    grid = {  # one column per event of the life: report, assign, claim, resolve, close
        "kind": ["report", "assign", "claim", "resolve", close_kind],
        "actor_id": [
            reporter.astype(object),
            coordinator,
            official.astype(object),
            official.astype(object),
            close_actor,
        ],
        "from_state": [None, "reported", "assigned", "claimed", close_from],
        "to_state": ["reported", "assigned", "claimed", "resolved", close_to],
        "note": [None, None, None, "已办结", None],
        "data": ["{}", pools.assign_json[dept], "{}", "{}", close_data],
        "at": [created, assigned, claimed, resolved, closed],
    }
    keep = np.ones((n, 5), dtype=bool)
    keep[gone, 1:4] = False  # a withdrawn ticket: its report, then the withdrawal
    out: Columns = {"ticket_id": np.repeat(tid, 5)[keep.ravel()]}
    for name, parts in grid.items():
        matrix = np.empty((n, 5), dtype=object)
        for j, part in enumerate(parts):
            matrix[:, j] = part
        out[name] = matrix.ravel()[keep.ravel()]
    out["id"] = np.arange(first_id, first_id + len(out["ticket_id"]))
    return {c: out[c] for c in EVENT_COLUMNS}


def generate(
    chart: Chart, sizes: Sizes, *, seed: int = 11, chunk: int = 100_000
) -> Iterator[Chunk]:
    """All the rows: the closed history in chunks, then the open backlog and the due."""
    from bench.backlog import backlog

    rng = np.random.default_rng(seed)
    pools = Pools(chart)
    closed = sizes.tickets - sizes.open
    end = (NOW - timedelta(days=12)).timestamp()
    start = end - closed / CLOSED_PER_DAY * D
    event_id = nudge_id = 1
    for first in range(0, closed, chunk):
        n = min(chunk, closed - first)
        lo, hi = (
            start + (end - start) * first / closed,
            start + (end - start) * (first + n) / closed,
        )
        part = closed_history(pools, first + 1, n, lo, hi, rng, event_id, nudge_id)
        event_id += len(part.events["id"])
        nudge_id += len(part.nudges["id"])
        yield part
    yield backlog(chart, sizes, closed + 1, event_id, nudge_id, seed=seed)
