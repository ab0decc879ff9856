"""`train` (detox-train): the SageMaker training job, as a recipe.

setup  settings and inputs (before any model loads), runtime, the process group, models, the
       PPO trainer
run    PPO steps with checkpoints, resuming from the newest one; SIGTERM checkpoints and exits
save   model/ (one PEFT adapter for the plain base model) and output/data/training_summary.json

On several hosts (resourceconfig.json) each host runs one rank, or `processes_per_host` ranks
started with torch.multiprocessing; they meet at the static rendezvous of `contract.cluster`
and train data-parallel. Rank 0 alone writes model/, output/data/ and the checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flan_t5_detox.contract.cluster import Rendezvous, rendezvous
from flan_t5_detox.contract.environment import TrainingJobEnvironment
from flan_t5_detox.contract.failure import JobInputError, run_job, setup_logging
from flan_t5_detox.contract.memory import running
from flan_t5_detox.contract.paths import METRICS_FILE, ML_ROOT, MlPaths
from flan_t5_detox.contract.preflight import memory_settings
from flan_t5_detox.contract.settings import TrainConfig, check_resume, heldout_settings, parse_settings

if TYPE_CHECKING:
    from flan_t5_detox.ml.training import RunOutcome

log = logging.getLogger("flan_t5_detox.train")
EXIT_PREEMPTED = 143  # 128 + SIGTERM, as a process killed by it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="detox-train",
        description="Detoxify a FLAN-T5 summarizer with PPO (SageMaker training-job entrypoint). "
        "Settings come from <ml-root>/input/config/hyperparameters.json; inputs from the channels "
        "base_model, peft_checkpoint, dataset, reward_model under <ml-root>/input/data/.",
    )
    parser.add_argument("--ml-root", type=Path, default=ML_ROOT, help="folder standing in for /opt/ml")
    # SageMaker appends "train" to the image command; accept and ignore it.
    parser.add_argument("mode", nargs="?", choices=["train"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_split(config: TrainConfig, meeting: Rendezvous) -> None:
    """The batch sizes are global: every process must get the same share."""
    if config.batch_size % meeting.world_size or config.mini_batch_size % meeting.world_size:
        raise JobInputError(
            f"batch_size ({config.batch_size}) and mini_batch_size ({config.mini_batch_size}) are "
            f"global, split over {meeting.world_size} processes ({meeting.nodes} hosts x "
            f"{meeting.processes_per_host}): make both multiples of {meeting.world_size}"
        )


class TrainRecipe:
    """One rank of the train job: `setup`, `train`, `save`. Settings are parsed first, so bad
    ones fail before anything heavy is imported or any model loads."""

    def __init__(self, env: TrainingJobEnvironment, scratch: Path, local_rank: int = 0):
        self.env, self.scratch, self.local_rank = env, scratch, local_rank
        self.config = parse_settings(TrainConfig, env.hyperparameters)
        self.heldout_config = heldout_settings(self.config) if self.config.eval_every else None
        self.meeting = rendezvous(env, self.config.processes_per_host, os.environ)
        check_split(self.config, self.meeting)

    def check_resume(self) -> None:
        """A restart continues the run its checkpoints belong to, or fails before any model loads
        when the settings that define that run differ; allowed changes are logged."""
        from flan_t5_detox.ml import checkpoint

        recorded = checkpoint.recorded_settings(self.env.checkpoint_dir)
        if recorded is None:
            return
        folder, settings = recorded
        for change in check_resume(settings, self.config, str(self.env.checkpoint_dir)):
            log.info("resuming %s with a changed setting: %s", folder.name, change)

    def setup(self) -> None:
        """Outputs, inputs and data first, so bad input fails before the models load."""
        from flan_t5_detox.contract import preflight
        from flan_t5_detox.contract.inputs import training_inputs
        from flan_t5_detox.contract.outputs import check_writable
        from flan_t5_detox.ml import adapters, checkpoint, data, distributed, evaluation, runtime
        from flan_t5_detox.ml.heldout import HeldOut
        from flan_t5_detox.ml.loading import load_tokenizer
        from flan_t5_detox.ml.policy import build_policy
        from flan_t5_detox.ml.ppo import DetoxTrainer
        from flan_t5_detox.ml.rewards import RewardModel

        env, config = self.env, self.config
        for folder, what in (
            (env.model_dir, "model"),
            (env.output_data_dir, "output data"),
            (env.checkpoint_dir, "checkpoint"),
            (MlPaths(env.root).tensorboard, "TensorBoard"),
        ):
            check_writable(folder, f"the {what} folder")
        if self.meeting.rank(self.local_rank) == 0:  # rank 0 reads the checkpoints
            self.check_resume()
        self.inputs = training_inputs(env, config, self.scratch)
        prompts = data.training_prompts(self.inputs.dataset, config)
        if self.heldout_config is not None:
            evaluation.select_examples(prompts.validation, 0)  # they must have reference summaries
        self.machine = runtime.setup(config.dtype, config.num_threads, config.processes_per_host)
        longest = max(len(example.prompt) for example in prompts.train + prompts.validation)
        preflight.check_training(
            config, self.inputs, env, longest, self.machine.weight_bytes, checkpoint.KEEP
        )  # before any model loads
        self.world = distributed.join(self.meeting, self.local_rank, config.collective_timeout)
        log.info(
            "rank %d/%d dtype=%s threads=%d train_prompts=%d heldout_prompts=%d",
            self.world.rank,
            self.world.size,
            self.machine.dtype_name,
            self.machine.threads,
            len(prompts.train),
            len(prompts.validation),
        )
        self.tokenizer = load_tokenizer(self.inputs.base_model)
        summarizer = adapters.load_merged(
            self.inputs.base_model, self.inputs.peft_checkpoint, self.machine.dtype
        )
        summarization = adapters.read_lora_config(self.inputs.peft_checkpoint)
        self.policy = build_policy(summarizer, summarization, config.seed)
        reward_model = RewardModel(
            self.inputs.reward_model, config.reward_label, config.reward_input, batch_size=config.batch_size
        )
        heldout = None
        if self.heldout_config is not None:
            reward_model.index_of(config.toxic_label)  # a missing label fails before training
            heldout = HeldOut(prompts.validation, reward_model, self.heldout_config)
        self.trainer = DetoxTrainer(
            config, self.policy, self.tokenizer, prompts.train, reward_model.rewards, self.world, heldout
        )
        self.provenance = adapters.Provenance(**self.inputs.provenance, reward_label=config.reward_label)

    def train(self) -> RunOutcome:
        """PPO steps to `max_ppo_steps`, resumed from the newest checkpoint. Adapters kept along
        the way live beside the checkpoints, so a restarted job still has them."""
        from flan_t5_detox.contract.metrics import MetricsLog
        from flan_t5_detox.ml import adapters
        from flan_t5_detox.ml.heldout import BestRule
        from flan_t5_detox.ml.training import TrainingRun

        env, config = self.env, self.config
        self.keeper = adapters.AdapterKeeper(
            env.checkpoint_dir,
            config.save_adapter_every,
            self.policy,
            self.inputs.peft_checkpoint,
            self.provenance,
        )
        metrics = MetricsLog(env.output_data_dir / METRICS_FILE)
        self.best_rule = None
        if config.keep_best:
            self.best_rule = BestRule(config.max_rouge_drop, self.trainer.heldout.toxicity)
        run = TrainingRun(
            self.trainer,
            env.checkpoint_dir,
            metrics,
            config.checkpoint_every,
            self.keeper,
            events=MlPaths(env.root).tensorboard if self.world.is_main else None,
            best_rule=self.best_rule,
        )
        self.started = time.time()
        run.resume()
        return run.run(config.max_ppo_steps)

    def save(self, outcome: RunOutcome) -> None:
        """model/ (whole or not at all) and output/data/training_summary.json; rank 0 only."""
        from flan_t5_detox.contract.summary import TrainingSummary
        from flan_t5_detox.ml import adapters, runtime

        chosen = self.keep_best(outcome)
        info = adapters.publish_detox_model(
            self.env.model_dir,
            self.policy,
            self.tokenizer,
            self.inputs.peft_checkpoint,
            self.provenance,
            outcome.steps,
            kept_in=self.env.checkpoint_dir,
            chosen=chosen,
        )
        summary = TrainingSummary.from_history(
            self.trainer.history,  # steps 1..N, whichever runs did them (the checkpoints carry it)
            steps=outcome.steps,
            seconds_this_run=round(time.time() - self.started, 3),
            settings=dataclasses.asdict(self.config),
            world_size=self.world.size,
            adapter=dataclasses.asdict(info),
            **self.machine.describe(),
            versions=runtime.versions(),
        )
        summary.write(self.env.output_data_dir)
        log.info(
            "done: %d steps; adapter of step %d in %s", outcome.steps, info.ppo_steps, self.env.model_dir
        )

    def keep_best(self, outcome: RunOutcome):
        """keep_best: the last step's adapter goes to steps/, then the policy takes the chosen
        step's weights for model/. Returns what adapter_info.json says of the choice, or None."""
        from flan_t5_detox.ml import adapters, checkpoint

        if outcome.best is None:
            return None
        self.keeper.save(outcome.steps)
        checkpoint.load_trainable(self.policy, outcome.best.trainable)
        figures = next(r for r in self.trainer.history if r["step"] == outcome.best.step)
        chosen = adapters.ChosenStep(
            step=outcome.best.step,
            rule=self.best_rule.statement(),
            figures={k: v for k, v in figures.items() if k.startswith("heldout_")},
            start={k: v for k, v in outcome.start.items() if k != "step"},
            last_step=outcome.steps,
        )
        log.info(
            "keep_best: model/ holds step %d of %d (%s); the last step's adapter is in steps/%d",
            chosen.step, chosen.last_step, chosen.rule, chosen.last_step,
        )  # fmt: skip
        return chosen

    def close(self) -> None:
        """Leave the process group. The trainer (with its DDP reducer, which holds the group) is
        dropped first, while the group is still alive: freed after the group is destroyed, the
        reducer's destructor joins gloo's worker threads and can deadlock with one of them
        waiting for the interpreter lock."""
        from flan_t5_detox.ml import distributed

        self.trainer = self.policy = None
        gc.collect()
        distributed.leave(self.world)


def train(env: TrainingJobEnvironment, scratch: Path, local_rank: int = 0) -> int:
    recipe = TrainRecipe(env, scratch, local_rank)
    recipe.setup()
    outcome = None
    try:
        outcome = recipe.train()
        if outcome.preempted:
            return EXIT_PREEMPTED
        if recipe.world.is_main:
            recipe.save(outcome)
        # The other ranks end once model/ is written: the SageMaker SDK's local mode (docker
        # compose) stops every container when the first one exits.
        recipe.world.barrier()
        return 0
    finally:
        # A rank stopped by SIGTERM leaves its process group as it is (see `end_stopped`).
        if outcome is None or not outcome.preempted or recipe.world.size == 1:
            recipe.close()


def end_stopped(code: int) -> int:
    """The end of a process whose job SIGTERM stopped: at once, without the interpreter's teardown.
    Its peers stopped each at its own point, so its process group may hold a collective that one
    of them never joins; tearing the group down would wait for it up to `collective_timeout`,
    longer than SageMaker waits before SIGKILL. The checkpoint and the outputs are written by now,
    and the exit closes the sockets the peers wait on. Other exits return `code`."""
    if code != EXIT_PREEMPTED:
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_rank(ml_root: Path, local_rank: int = 0) -> int:
    """One rank's job, with its own scratch folder (a downloaded adapter; gone at exit)."""
    env = TrainingJobEnvironment.from_root(ml_root)
    scratch = Path(tempfile.mkdtemp(prefix="detox-train-"))
    try:
        return train(env, scratch, local_rank)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _spawned_rank(local_rank: int, ml_root: Path) -> None:
    """A process of `processes_per_host` > 1: its exit code is its job's."""
    import threading

    from tqdm import tqdm

    setup_logging()
    # tqdm's default lock is a multiprocessing semaphore, which `end_stopped` would leave to the
    # resource tracker (with a warning); one process draws the bars, so a thread lock does.
    tqdm.set_lock(threading.RLock())
    code = end_stopped(run_job(lambda: run_rank(ml_root, local_rank), [MlPaths(ml_root).failure]))
    if code:
        sys.exit(code)


def spawn_ranks(ml_root: Path, processes: int) -> int:
    """This host's ranks as torch.multiprocessing processes (torchrun of torch 1.13 fails on
    Python 3.11). SIGTERM is passed on to each, so each checkpoints or exits as it would alone."""
    import signal

    import torch.multiprocessing as mp

    context = mp.start_processes(_spawned_rank, (ml_root,), processes, join=False, start_method="spawn")

    def forward(signum, _frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as exc:
        return exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    spawned = False  # this process started the ranks and is none of them

    def body() -> int:
        nonlocal spawned
        env = TrainingJobEnvironment.from_root(args.ml_root)
        config = parse_settings(TrainConfig, env.hyperparameters)
        # A marker in checkpoints/ while the job runs: a SIGKILL (out of memory) leaves it behind
        # for the next start to report.
        with running(env.checkpoint_dir, memory_settings(config)):
            if config.processes_per_host > 1:
                spawned = True
                return spawn_ranks(args.ml_root, config.processes_per_host)
            return run_rank(args.ml_root)

    code = run_job(body, [MlPaths(args.ml_root).failure])
    return code if spawned else end_stopped(code)


if __name__ == "__main__":
    sys.exit(main())
