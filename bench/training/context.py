"""What the parts that run a grid share (teachers, training, stages, records): the grid, the
accelerator, each domain's data (loaded and tokenised once), the student's tokenizer and the
teacher's view of student batches. The parts read the grid's fields; they never call back into
the orchestration (bench/grid/)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from bench.data.domains import DomainData, load_domain
from bench.models.classifier import load_tokenizer
from bench.models.vocab import MappedTeacher, VocabMap, align

if TYPE_CHECKING:
    from bench.grid.spec import Grid


class GridContext:
    """What the parts of a grid's run share. Data is tokenised by the student's tokenizer only: a
    teacher of another vocabulary reads student batches through `teacher_view`."""

    def __init__(self, grid: Grid, accelerator):
        self.grid = grid
        self.accelerator = accelerator
        self._data: dict[str, DomainData] = {}

    def data(self, domain: str) -> DomainData:
        if domain not in self._data:
            g = self.grid
            self._data[domain] = load_domain(g.suite, domain, g.preset, g.data, g.train_ratio)
        return self._data[domain]

    @property
    def main(self) -> bool:
        """Whether this is the process that writes (results, checkpoints, the store, logs)."""
        return self.accelerator.is_main_process

    def agree(self, value: Any) -> Any:
        """The main process's `value`, on every process (they must take the same decisions)."""
        if self.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    @functools.cached_property
    def student_tokenizer(self):
        return load_tokenizer(self.grid.preset.student.ref)

    @functools.cached_property
    def vocab_map(self) -> VocabMap | None:
        """Student ids -> teacher ids when their vocabularies differ (data is tokenised once, by
        the student's tokenizer); refuses teachers whose tokens cannot line up."""
        vocab_map = align(load_tokenizer(self.grid.preset.teacher.ref), self.student_tokenizer)
        return vocab_map.to(self.accelerator.device) if vocab_map else None

    def teacher_view(self, model):
        """The teacher as the harness calls it: on student batches."""
        return MappedTeacher(model, self.vocab_map) if self.vocab_map else model
