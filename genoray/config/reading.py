"""Reading and cleaning settings: :class:`CleanPolicy`, :class:`ReadConfig`, and the split
names every stage defaults to (:data:`TRAIN`, :data:`TEST`)."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

from genoray.config.base import config_class, validate

TRAIN = "train"  #: the default name of the split encoders, indexes and heads are fitted on
TEST = "test"  #: the default name of the held-out split evaluations and gates score
#: field metadata of an optional split name: ``all`` on the command line means ``None``, every row
ALL: dict[str, Any] = {"none": ("all",), "none_help": "every row"}


@config_class
class CleanPolicy:
    """How raw sequences are cleaned; every rejection is counted with its reason.

    Attributes:
        uppercase: upper-case the sequence (lower-case soft-masking is otherwise rejected).
        rna_to_dna: translate U to T.
        ambiguous: ``"to_n"`` maps IUPAC ambiguity codes (R Y S W K M B D H V) to N;
            ``"reject"`` rejects records that contain them.
        strip_gaps: remove alignment gaps ``-`` and ``.`` instead of rejecting the record.
        max_n_fraction: reject records whose fraction of N exceeds this.
        min_length / max_length: reject records outside this length range (after cleaning).
        long_records: what happens to a record longer than ``max_length``: ``"reject"`` (reason
            ``too_long``) or ``"window"``: cut it into ``max_length``-bp windows overlapping by
            ``window_overlap`` (the last one aligned to the record's end), each a row with id
            ``<id>:<start>-<end>`` (1-based, inclusive) and ``source_id``/``start``/``end`` in its
            metadata (coordinates of the record as read). Each window is cleaned and checked on
            its own (alphabet, N fraction), so one bad region loses its windows, not the record.
            FASTA files are then streamed line by line, so a long record is never held whole.
            Use it for chromosomes and assemblies.
        window_overlap: bases shared by consecutive windows.
        duplicate_ids: ``"reject"`` rejects a repeated id within one read; ``"error"`` raises.
    """

    uppercase: bool = True
    rna_to_dna: bool = True
    ambiguous: Literal["to_n", "reject"] = "to_n"
    strip_gaps: bool = False
    max_n_fraction: float = 0.1
    min_length: int = 1
    max_length: int = 1_000_000
    long_records: Literal["reject", "window"] = "reject"
    window_overlap: int = 0
    duplicate_ids: Literal["reject", "error"] = "reject"

    def __post_init__(self) -> None:
        validate(self,
                 (0.0 <= self.max_n_fraction <= 1.0, f"max_n_fraction must be in [0, 1], got {self.max_n_fraction}"),
                 (0 <= self.min_length <= self.max_length,
                  f"need 0 <= min_length <= max_length, got {self.min_length}, {self.max_length}"),
                 (0 <= self.window_overlap < self.max_length,
                  f"need 0 <= window_overlap < max_length, got {self.window_overlap}"))


@config_class
class ReadConfig:
    """Where ids, sequences, labels and domains come from in each input format.

    Attributes:
        id_column / sequence_column / label_column / domain_column / split_column: column names
            for Parquet and CSV/TSV input. ``id_column=None`` picks ``seq_id`` or ``id``.
        label_key / domain_key / split_key: FASTA/FASTQ header tags ``key=value``.
        batch_size: records per Arrow batch.
        clean: the cleaning policy.
        train_split: the training split: what an encoder that needs fitting is fitted on
            (``None``, on the command line ``all``: every row), and the name ``test_fraction``
            gives the rest.
        test_split: the held-out split, and the name ``test_fraction`` gives the held-out part.
        test_fraction: records without a split (no split column or tag) get one: this fraction
            of each label becomes the test split, the rest the train split (stratified, seeded,
            decided per record id; see :mod:`genoray.sequences.splits`). 0 leaves them without a split.
        split_seed: seed of that assignment.
        split_cutoffs: per-label hash thresholds of the assignment; filled by
            ``embed_sequences`` from a pass over the input (leave empty).
    """

    id_column: str | None = None
    sequence_column: str = "sequence"
    label_column: str | None = "label"
    domain_column: str | None = "domain"
    split_column: str | None = "split"
    label_key: str = "label"
    domain_key: str = "domain"
    split_key: str = "split"
    batch_size: int = 8192
    clean: CleanPolicy = field(default_factory=CleanPolicy)
    train_split: str | None = field(default=TRAIN, metadata=ALL)
    test_split: str | None = field(default=TEST, metadata=ALL)
    test_fraction: float = 0.0
    split_seed: int = 0
    split_cutoffs: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        validate(self, (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                 (0.0 <= self.test_fraction < 1.0, f"test_fraction must be in [0, 1), got {self.test_fraction}"),
                 (len(set(self.split_names)) == 2, f"the train and test splits must differ, got {self.split_names}"))

    @property
    def split_names(self) -> tuple[str, str]:
        """The (train, test) names ``test_fraction`` assigns (``all`` leaves the defaults)."""
        return self.train_split or TRAIN, self.test_split or TEST
