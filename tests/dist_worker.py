"""One rank of a hand-started CPU process group, for tests/test_scale.py (run as a script, not collected).

    python tests/dist_worker.py MODE OUT        (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment)

MODE ``pair``: both ranks compute the train×train and eval×train eNTK of tiny-llama; rank 0 saves them.
MODE ``die``:  rank 1 exits right after joining; rank 0 must stop with one clear error line (exit 2).
MODE ``train:B`` / ``kill:B:K`` / ``resume:B``: a LoRA run with selective pull, per-rank batch B, through
the trainer (accelerate); ``kill`` makes every rank vanish (like SIGKILL) after step K's callback.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)


def train(mode: str, out: str) -> int:
    from conftest import DATA_DIR
    from tangentft.train.config import TrainConfig, load_config
    from tangentft.train.run import run_training

    kind, batch, *rest = mode.split(":")
    if kind == "resume":
        run_training(load_config(out), out, resume=True)
        return 0
    cfg = TrainConfig(model="tiny-llama", task=str(DATA_DIR / "sst2"), method="lora",
                      method_options={"params": "lora(r=4):q,v@all"}, reg="selective", lam=5.0, lr=1e-2,
                      batch_size=int(batch), n_train=24, max_steps=6, eval_every=2, n_eval=8, probe_size=4,
                      seed=1, device="cpu", warmup_ratio=0.0)

    def kill(step, total, info):
        if kind == "kill" and step == int(rest[0]):
            os._exit(137)

    run_training(cfg, out, callback=kill)
    return 0


def main(mode: str, out: str) -> int:
    if mode.split(":")[0] in ("train", "kill", "resume"):
        return train(mode, out)
    import tangentft.methods  # noqa: F401
    from conftest import sst2_spec, tiny_task_model, toy_examples
    from tangentft import distributed
    from tangentft.errors import TangentError
    from tangentft.models.selection import select
    from tangentft.ntk import empirical_ntk_pair

    distributed.init(torch.device("cpu"), timeout_s=30)
    if mode == "die" and distributed.rank() == 1:
        os._exit(1)
    tm = tiny_task_model("tiny-llama", sst2_spec())
    sel = select(tm, "q,v,o@all", groups="layer")
    x, x_eval = toy_examples(40, seed=1), toy_examples(20, seed=2)
    try:
        k, kc = empirical_ntk_pair(tm, sel, x, x_eval, chunk_size=6)
    except TangentError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if distributed.is_main():
        k.save(os.path.join(out, "train"))
        kc.save(os.path.join(out, "cross"))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
