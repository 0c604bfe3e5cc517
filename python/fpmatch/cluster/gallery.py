"""The sharded gallery: a :class:`ProtectedGallery` whose parts are replica actors, one set per shard.

The service keeps consent, audit, erasure and the store (the source of truth)
and talks to this gallery exactly as to a single one. Here:

- writes are staged on one live replica of each shard concerned; the service
  commits them to the store; :meth:`Staged.apply` then replays them on every
  live replica of those shards and returns once each confirmed;
- 1:N fans out to every shard at once. ``hash``: the shards' nearest codes are
  merged by weighted distance. ``hybrid``: the shards' Hamming shortlists are
  merged first, then each shard encrypts its part of the scores. ``he``: each
  shard scores its eligible subjects. The parts are joined into ONE request to
  the key holder, as the single service sends;
- 1:1 goes to the subject's shard.

Eligibility (consent and purpose) is decided here, never in a replica: a
shard's candidates are filtered, and a shard whose candidates were mostly
ineligible is searched deeper, as a single gallery does.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..edge import EdgeProfile, EnrolmentRecord, ProbeMessage
from ..errors import InvalidInputError, NotCalibratedError
from ..galleries import ProtectedGallery, Staged, StoredRow, StoredTemplate
from ..galleries.codes import CodeTable, weighted_score
from ..galleries.hashed import default_shortlist
from ..he.errors import RateLimitExceededError
from .placement import Placement, RowLayout
from .replica import TemplateTuple
from .shards import ShardReplicas

class ShardedGallery(ProtectedGallery):
    """Subjects on S shards of R replica actors each; the service's view of them as one gallery."""

    def __init__(
        self,
        profile: EdgeProfile,
        placement: Placement,
        replicas: ShardReplicas,
        layout: RowLayout,
        *,
        decider: Any = None,
        caller: str = "matching-service",
        candidates: int | None = None,
        shortlist: int | None = None,
    ) -> None:
        super().__init__(profile)
        self.placement = placement
        self.replicas = replicas
        self.layout = layout
        if candidates is None:
            from ..galleries.hybrid import DEFAULT_CANDIDATES  # not at import: it loads the he package

            candidates = DEFAULT_CANDIDATES
        self.candidates = candidates
        self._shortlist_depth = default_shortlist(profile) if shortlist is None else shortlist
        self._decider = decider
        self._caller = caller
        self._count = [0] * placement.shards

    @property
    def shards(self) -> int:
        return self.placement.shards

    # -- loading ---------------------------------------------------------------------

    def ids_on(self, shard: int) -> list[int]:
        """Store ids of the subjects placed on ``shard``."""
        return [id_ for name, id_ in self._ids.items() if self.placement.shard_of(name) == shard]

    def split_store(
        self, stored: Sequence[StoredTemplate], rows: Sequence[StoredRow], layout: RowLayout
    ) -> list[tuple[list[TemplateTuple], list[StoredRow]]]:
        """Each shard's part of the store, as plain tuples for its replicas."""
        return [(templates, layout.of_shard(s, rows)) for s, templates in enumerate(self._templates_by_shard(stored))]

    def _templates_by_shard(self, stored: Sequence[StoredTemplate]) -> list[list[TemplateTuple]]:
        templates: list[list[TemplateTuple]] = [[] for _ in range(self.shards)]
        for t in stored:
            templates[self.placement.shard_of(t.subject)].append(template_tuple(t))
        return templates

    def restore(self, stored: Sequence[StoredTemplate], rows: Sequence[StoredRow], index: Any) -> bool:
        return self.restore_from(stored, lambda shard: self.layout.of_shard(shard, rows))

    def restore_from(self, stored: Sequence[StoredTemplate], read_rows: Callable[[int], list[StoredRow]]) -> bool:
        """Start the replicas from every subject's template and each shard's rows as ``read_rows(shard)``
        reads them, one shard at a time (the service's memory holds one shard's rows, not the store's)."""
        templates = self._templates_by_shard(stored)
        self.replicas.start(lambda shard: (templates[shard], read_rows(shard)))
        self._bind([t.subject for t in stored], [t.id for t in stored])
        for shard, part in enumerate(templates):
            self._count[shard] += len(part)
        return False

    # -- writes ------------------------------------------------------------------------

    def stage_add(self, subjects: Sequence[str], records: Sequence[EnrolmentRecord]) -> Staged:
        parts = self.placement.split(subjects)
        messages = [r.to_bytes() for r in records]
        replies: dict[int, dict[bytes, bytes | None]] = {shard: {} for shard in parts}
        staged: dict[int, dict[str, Any]] = {}
        while len(staged) < len(parts):  # a shard asking for a reclaim reply is staged again with it
            calls = {
                shard: ("stage_add", ([subjects[p] for p in positions], [messages[p] for p in positions], replies[shard]))
                for shard, positions in parts.items()
                if shard not in staged
            }
            for shard, result in self.replicas.fan_out(calls).items():
                if "reclaim" in result:
                    replies[shard][result["reclaim"]] = self._reclaim(result["reclaim"])
                else:
                    staged[shard] = result
        n = len(subjects)
        out = Staged(codes=[None] * n, slots=[None] * n, sealed=[None] * n)
        for shard, positions in parts.items():
            result = staged[shard]
            for i, p in enumerate(positions):
                out.codes[p], out.slots[p], out.sealed[p] = result["codes"][i], result["slots"][i], (result["sealed"] or [None] * len(positions))[i]
            out.resealed.update(result["resealed"])
        pending = self._place_rows(out, {shard: staged[shard] for shard in parts})

        def apply(ids: Sequence[int]) -> None:
            for shard, positions in parts.items():
                self.replicas.replay(shard, staged[shard]["change"], [ids[p] for p in positions])
                self._count[shard] += len(positions)
            self._bind(subjects, ids)
            self.layout.append(pending)

        out.apply = apply
        return out

    def stage_remove(self, subjects: Sequence[str]) -> Staged:
        parts = self.placement.split(subjects)
        for subject in subjects:
            self.id_of(subject)  # UnknownSubjectError before any shard is asked
        calls = {shard: ("stage_remove", ([subjects[p] for p in positions],)) for shard, positions in parts.items()}
        staged = self.replicas.fan_out(calls)
        out = Staged()
        for shard in parts:
            out.erased += staged[shard]["erased"]
        pending = self._place_rows(out, {shard: staged[shard] for shard in parts})

        def apply(_: Sequence[int]) -> None:
            for shard, positions in parts.items():
                self.replicas.replay(shard, staged[shard]["change"], [])
                self._count[shard] -= len(positions)
            self._unbind(subjects)
            self.layout.append(pending)

        out.apply = apply
        return out

    def _place_rows(self, out: Staged, results: Mapping[int, Mapping[str, Any]]) -> list[tuple[int, int]]:
        """The shards' written rows under their stored numbers, rows new to the layout numbered after
        every existing one, and the settings recording them; returns those new (shard, local) rows."""
        layout, pending = self.layout, []
        for shard, result in results.items():
            pending += layout.fresh(shard, list(result["rows"]), pending)
        numbers = {entry: len(layout.entries) + i for i, entry in enumerate(pending)}
        for shard, result in results.items():
            for local, stored in result["rows"].items():
                row = layout.stored(shard, local)
                out.rows[numbers[(shard, local)] if row is None else row] = stored
        if pending:
            out.settings.update(layout.settings_for(pending))
        return pending

    def _reclaim(self, request: bytes) -> bytes | None:
        if self._decider is None:
            return None
        try:
            return bytes(self._decider.reclaim(request, caller=self._caller))
        except RateLimitExceededError:  # as in-process: a busy key holder means new slots, not an error
            return None

    def replay(self, change: Any, ids: Sequence[int]) -> None:
        raise InvalidInputError("a sharded gallery replays changes on its replicas, not as a whole")

    # -- 1:1 ------------------------------------------------------------------------------

    def decide(self, subject: str, probe: ProbeMessage, threshold: float, *, label: str | None = None) -> bool:
        shard = self.placement.shard_of(subject)
        id_ = self.id_of(subject)
        if not self.profile.encrypted:
            return bool(self.replicas.call(shard, "decide_codes", subject, probe.to_bytes(), float(threshold)))
        assert probe.values is not None
        request, _ = self.replicas.call(shard, "encrypted_scores", [id_], _values(probe))
        (verified,) = self._key_holder().decide(request, threshold, caller=self._caller, subject=label)
        return bool(verified)

    # -- 1:N ---------------------------------------------------------------------------------

    def search(self, probe: ProbeMessage, k: int, threshold: float, eligible: Callable[[str], bool]) -> list[str]:
        if self.profile.scheme == "he":
            return self._search_all(probe, k, threshold, eligible)
        assert probe.code is not None and probe.reliability is not None
        if self.profile.scheme == "hash":
            found = self._nearest(probe, k, eligible)
            return [self._names[id_] for id_, d in found if weighted_score(d) >= threshold]
        # Two rounds: the shards' shortlists (ids and distances: small) are merged first, then only
        # the shards holding the merged candidates encrypt their scores. Scoring in the first round
        # (each shard's whole shortlist, or 1.5 times its share of the candidates) moved more
        # ciphertext bytes and scored more than the second round costs over the replicas' links:
        # slower at 2 and 4 shards, no faster at 1 (README, "Many machines").
        found = self._nearest(probe, max(k, self.candidates), eligible)
        if not found:
            return []
        by_shard: dict[int, list[int]] = {}
        for id_, _ in found:
            by_shard.setdefault(self.placement.shard_of(self._names[id_]), []).append(id_)
        return self._decide_best(probe, by_shard, k, threshold)

    def shortlist_ids(self, probe: ProbeMessage, want: int, eligible: Callable[[str], bool]) -> list[int]:
        if self.profile.scheme != "hybrid":
            return super().shortlist_ids(probe, want, eligible)
        return [id_ for id_, _ in self._nearest(probe, want, eligible)]

    def _nearest(self, probe: ProbeMessage, want: int, eligible: Callable[[str], bool]) -> list[tuple[int, float]]:
        """The ``want`` eligible (id, weighted distance) nearest the probe over every shard, nearest first.

        The shards' lists are walked merged, nearest first (ties by id), and only what is walked is
        checked for eligibility; a shard whose list is used up while more are wanted, and which holds
        more, is asked again four times deeper and the walk starts over."""
        code = probe.code.tobytes()  # type: ignore[union-attr]
        reliability = np.ascontiguousarray(probe.reliability, dtype="<f4").tobytes()
        depth = {s: min(self._count[s], max(want, 16)) for s in range(self.shards) if self._count[s]}
        lists: dict[int, list[tuple[float, int, int]]] = {}
        verdicts: dict[int, bool] = {}
        found: list[tuple[int, float]] = []
        asking = dict(depth)
        while asking:
            for shard, (ids, distances) in self.replicas.fan_out({s: ("nearest", (code, reliability, d)) for s, d in asking.items()}).items():
                lists[shard] = sorted((d, i, shard) for i, d in zip(ids, distances))
            found = []
            left = {shard: len(items) for shard, items in lists.items()}
            asking = {}
            for distance, id_, shard in heapq.merge(*lists.values()):
                if id_ not in verdicts:
                    verdicts[id_] = self._eligible_id(id_, eligible)
                if verdicts[id_]:
                    found.append((id_, distance))
                    if len(found) == want:
                        return found
                left[shard] -= 1
                if not left[shard] and len(lists[shard]) == depth[shard] < self._count[shard]:
                    depth[shard] = asking[shard] = min(self._count[shard], depth[shard] * 4)
                    break
        return found

    def _search_all(self, probe: ProbeMessage, k: int, threshold: float, eligible: Callable[[str], bool]) -> list[str]:
        by_shard: dict[int, list[int]] = {}
        for name, id_ in self._ids.items():
            if eligible(name):
                by_shard.setdefault(self.placement.shard_of(name), []).append(id_)
        if not by_shard:
            return []
        return self._decide_best(probe, by_shard, k, threshold)

    def _decide_best(self, probe: ProbeMessage, by_shard: dict[int, list[int]], k: int, threshold: float) -> list[str]:
        """Each shard's part of the encrypted scores, joined into one request to the key holder."""
        values = _values(probe)
        parts = self.replicas.fan_out({s: ("encrypted_scores", (ids, values)) for s, ids in sorted(by_shard.items())})
        order = [id_ for s in sorted(parts) for id_ in parts[s][1]]
        return self._best(self._joined({s: parts[s][0] for s in parts}), order, k, threshold)

    @staticmethod
    def _joined(parts: Mapping[int, bytes]) -> bytes:
        """One request from the shards' requests, in shard order."""
        from ..he.scores import join_requests

        return join_requests([parts[s] for s in sorted(parts)])

    def _best(self, request: bytes, order: list[int], k: int, threshold: float) -> list[str]:
        positions = self._key_holder().best(request, threshold, min(k, len(order)), caller=self._caller)
        return [self._names[order[p]] for p in positions]

    def _key_holder(self) -> Any:
        if self._decider is None:
            raise InvalidInputError("this gallery was made without a key holder: pass one to decide")
        return self._decider

    # -- checks and calibration ---------------------------------------------------------------

    def problems(self, stored: Mapping[str, StoredTemplate], rows: Sequence[StoredRow]) -> list[str]:
        problems = []
        if len(self.layout.entries) != len(rows):
            problems.append(f"the row layout numbers {len(self.layout.entries)} rows, the database holds {len(rows)}")
            return problems
        for shard, (templates, shard_rows) in enumerate(self.split_store(list(stored.values()), rows, self.layout)):
            answers = self.replicas.ask_every(shard, "problems", templates, shard_rows)
            if len(answers) < self.replicas.replicas:
                problems.append(f"shard {shard}: {len(answers)} of {self.replicas.replicas} replicas live")
            for number, found in enumerate(answers):
                problems += [f"shard {shard} replica {number}: {p}" for p in found]
        return problems

    def impostor_scores(self, count: int, rng: np.random.Generator) -> np.ndarray:
        if self.profile.scheme == "he" or self.profile.narrow_cone:
            raise NotCalibratedError(
                f"this {self.profile.scheme} service is calibrated at the capture edge: pass "
                "CaptureEdge.calibration(templates, labels, target_fmr) to calibrate()"
            )
        assert self.profile.bits is not None
        gathered = self.replicas.fan_out({s: ("codes", ()) for s in range(self.shards) if self._count[s]})
        pairs = sorted((id_, codes[i * self.profile.bits // 8 : (i + 1) * self.profile.bits // 8])
                       for ids, codes in gathered.values() for i, id_ in enumerate(ids))
        table = CodeTable(self.profile.bits, "flat", self._shortlist_depth)
        table.load([id_ for id_, _ in pairs], [code for _, code in pairs])
        return table.impostor_scores(count, rng)


def template_tuple(t: StoredTemplate) -> TemplateTuple:
    """A stored template as a replica takes it."""
    return (t.subject, t.id, t.code, t.slot, t.sealed)


def _values(probe: ProbeMessage) -> bytes:
    assert probe.values is not None
    return np.ascontiguousarray(probe.values, dtype="<i8").tobytes()
