"""Shard dataset, a resumable per-rank prompt order, and a loader that builds ModelInputs ahead of time.

Training never decodes an mp4: samples come from `python -m preprocess` shards. The processor (chat
template, video patches, Whisper features) runs inside DataLoader workers, so the next batch's
`ModelInputs` is ready while the current step trains.

Order: each epoch is one permutation of all prompts (seeded by `seed + epoch`, or the identity for
`dataset_order: sequential`), cut into `world_size` equal interleaved slices (the remainder is dropped so
every rank runs the same number of steps — ranks that disagree hang under ZeRO-3). A `Cursor` (epoch,
position within this rank's slice) is saved in checkpoints and resumes the exact same order. The cursor and the
count of mp4 decodes travel beside each sample (`Loaded`) into the `Batch`, never inside the sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from omni_grpo.models.inputs import ModelInputs

REWARD_FIELDS = ("id", "question", "options", "answer", "problem_type", "extra")


class PromptDataset(Dataset):
    """All samples of one or more shard directories, indexed globally."""

    def __init__(self, dirs: list[str], skip_corrupt: bool = False, verify: bool = True):
        from preprocess.shards import load

        self.parts = [load(d, verify=verify, skip_corrupt=skip_corrupt) for d in dirs]
        self.skipped = [s for p in self.parts for s in getattr(p, "skipped", [])]
        self.offsets = [0]
        for p in self.parts:
            self.offsets.append(self.offsets[-1] + len(p))
        self.kept: list[int] | None = None  # global indices left after `drop`, or None for all

    def drop(self, indices: list[int]) -> None:
        """Leave the samples at these global indices out (e.g. prompts over `max_prompt_length`)."""
        gone = set(indices)
        self.kept = [i for i in range(self.offsets[-1]) if i not in gone]

    def __len__(self) -> int:
        return self.offsets[-1] if self.kept is None else len(self.kept)

    def __getitem__(self, index):
        """The sample at a global index; given `(index, cursor)` (what `RankSampler` yields), a `Loaded`."""
        if isinstance(index, tuple):
            index, cursor = index
            from preprocess import media

            before = media.VIDEO_DECODES
            sample = self[index]
            return Loaded(sample, cursor, media.VIDEO_DECODES - before)  # 0 unless something decodes an mp4
        if self.kept is not None:
            index = self.kept[index]
        for k, part in enumerate(self.parts):
            if index < self.offsets[k + 1]:
                return dict(part[index - self.offsets[k]])
        raise IndexError(index)


@dataclass(frozen=True)
class Cursor:
    """Where this rank is in its prompt order: the next prompt is `order(epoch)[position]`."""

    epoch: int = 0
    position: int = 0


def rank_order(n: int, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int) -> list[int]:
    """This rank's prompt indices for one epoch (equal length on every rank)."""
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    per_rank = n // world_size
    return order[rank::world_size][:per_rank]


class RankSampler(Sampler):
    """Endless batches of `batch_size` prompt indices for one rank, starting at a cursor.

    Each element is `(index, Cursor after this batch)` so the trainer can checkpoint exactly where the
    batch it is training on ends, however far the loader's workers have read ahead.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, shuffle: bool, rank: int, world_size: int, start: Cursor = Cursor()
    ):
        if n // world_size < batch_size:
            raise ValueError(
                f"{n} prompts cannot give {world_size} rank(s) a batch of {batch_size} each; add data or lower "
                "per_device_prompts"
            )
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start

    def batches_per_epoch(self) -> int:
        return (self.n // self.world_size) // self.batch_size

    def __iter__(self):
        epoch, pos = self.start.epoch, self.start.position
        while True:
            order = rank_order(self.n, epoch, self.seed, self.shuffle, self.rank, self.world_size)
            usable = len(order) - len(order) % self.batch_size
            while pos < usable:
                nxt = Cursor(epoch, pos + self.batch_size)
                if nxt.position >= usable:
                    nxt = Cursor(epoch + 1, 0)
                yield [(i, nxt) for i in order[pos : pos + self.batch_size]]
                pos += self.batch_size
            epoch, pos = epoch + 1, 0


class Loaded(NamedTuple):
    """One sample as the loader's workers hand it to `Collate`: the sample, the cursor after its batch, and
    the mp4 files decoded to read it (in the process that read it)."""

    sample: dict
    cursor: "Cursor | None" = None
    video_decodes: int = 0


@dataclass
class Batch:
    """A batch of prompts ready for the model: ModelInputs plus the fields rewards need."""

    inputs: ModelInputs
    samples: list[dict]  # REWARD_FIELDS of each prompt
    cursor: Cursor  # where the data order continues after this batch
    video_decodes: int = 0  # mp4 files decoded to make this batch (in the loader worker)


class Collate:
    """Runs the model family's processor call in the loader worker. `use_audio_in_video` is the config's
    default; a sample's own value (`use_audio_in_video` in its shard, from the jsonl manifest) overrides it
    for that row. `answer_instructions` (the config's: problem type -> text) replaces the default answer
    instructions (`rewards.instructions`); each sample's is set as its `instruction` before the prompt is
    built."""

    def __init__(
        self,
        family,
        processor,
        system_prompt: str,
        use_audio_in_video: bool,
        max_prompt_length: int,
        answer_instructions: dict | None = None,
    ):
        self.family, self.processor = family, processor
        self.system_prompt, self.flag, self.max_len = system_prompt, use_audio_in_video, max_prompt_length
        self.instructions = answer_instructions

    def __call__(self, items: list) -> Batch:
        """`items`: what `PromptDataset` returns for `RankSampler` indices (`Loaded`), or plain sample dicts."""
        from omni_grpo.rewards.instructions import instruction

        loaded = [item if isinstance(item, Loaded) else Loaded(item) for item in items]
        samples = [{**x.sample, "instruction": instruction(x.sample, self.instructions)} for x in loaded]
        inputs = self.family.build_inputs(self.processor, samples, self.system_prompt, self.flag, self.max_len)
        meta = [{k: s.get(k) for k in REWARD_FIELDS} for s in samples]
        return Batch(
            inputs=inputs, samples=meta, cursor=loaded[-1].cursor, video_decodes=sum(x.video_decodes for x in loaded)
        )


def make_loader(
    dataset: PromptDataset, collate: Collate, sampler: RankSampler, num_workers: int, prefetch_factor: int
) -> DataLoader:
    # Its own generator: creating the iterator must not draw from the global RNG, or a resumed run's
    # sampling stream would shift by one draw relative to the uninterrupted run.
    generator = torch.Generator().manual_seed(sampler.seed)
    kwargs = dict(num_workers=num_workers, collate_fn=collate, batch_sampler=sampler, generator=generator)
    if num_workers > 0:
        kwargs.update(
            prefetch_factor=prefetch_factor,
            persistent_workers=False,
            multiprocessing_context="fork" if torch.multiprocessing.get_start_method(True) in (None, "fork") else None,
        )
    return DataLoader(dataset, **kwargs)
