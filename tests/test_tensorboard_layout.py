"""TensorBoard: a run shows under its output folder's name (not "."), and its Custom Scalars tab opens on the curves
a run is watched for — reward/total, reward/accuracy, reward/format, actor/kl and eval/accuracy (each eval group's
too) — each chart matching tags the trainer really logs."""

import re

from omni_grpo.logging import FIRST_SCREEN, log_dir
from omni_grpo.trainer import GRPOTrainer
from tests.test_trainer import make_config

WATCHED = ["reward/total", "reward/accuracy", "reward/format", "actor/kl", "eval/accuracy"]


def test_the_run_is_named_and_its_first_screen_is_the_reward_curves(tiny_model_dir, tiny_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    out = tmp_path / "my-run"
    cfg = make_config(
        tiny_model_dir,
        tiny_shards,
        out,
        max_steps=1,
        eval_data=[str(tiny_shards)],
        eval_steps=1,
        reward_funcs=["format", "accuracy"],
    )
    GRPOTrainer(cfg).train()
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert [e.parent for e in events] == [out / "runs" / "my-run"] == [log_dir(out)]
    acc = EventAccumulator(str(log_dir(out)), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    layout = layout_pb2.Layout.FromString(acc.Tensors(next(iter(content)))[0].tensor_proto.string_val[0])
    (first, *_) = layout.category
    assert first.title == FIRST_SCREEN and [c.title for c in first.chart] == WATCHED
    scalars = acc.Tags()["scalars"]
    for chart in first.chart:
        (regex,) = chart.multiline.tag
        matched = [t for t in scalars if re.search(regex, t)]
        assert chart.title in matched, (chart.title, matched)
        if chart.title == "eval/accuracy":  # with each eval group's accuracy, never a reward's
            assert len(matched) > 1 and "eval/reward/accuracy" not in matched, matched
        else:
            assert matched == [chart.title]
