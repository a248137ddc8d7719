"""Train the two small models of tests/test_autoattack.py and benchmarks/bench_autoattack.py
and write their weights (fp16) to tests/data/autoattack/:

- model_b_mnist.pt: lsa_fast model B, PGD adversarial training (5 steps, eps ramped
  0 -> 0.3 over the first half) on the 2 000 real MNIST training digits of
  tests/data/mnist, EPOCHS epochs, Adam 1e-3;
- cnn_cifar_shaped.pt: a small CNN on 3x32x32 (tests/aa_models.py), PGD training
  (eps 8/255) on synthetic images (class prototypes plus noise, seed 0).

    python scripts/make_autoattack_models.py [OUT_DIR]

Deterministic on one CPU thread (torch.manual_seed(0))."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))

from aa_models import cifar_shaped_cnn, synthetic_cifar  # noqa: E402
from lsa_fast.attacks import pgd  # noqa: E402
from lsa_fast.data import load_mnist  # noqa: E402
from lsa_fast.models import build_model  # noqa: E402

EPOCHS = 8


def adversarial_training(model, x, y, eps_max, epochs, batch=100):
    """PGD-5 training with eps ramped up linearly over the first half (training at
    MNIST's 0.3 from the start stalls at chance)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        eps = eps_max * min(1.0, epoch / max(epochs // 2, 1))
        order = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], batch):
            xb, yb = x[order[i : i + batch]], y[order[i : i + batch]]
            x_adv = pgd(model, xb, yb, eps, steps=5) if eps > 0 else xb
            model.train()
            loss = F.cross_entropy(model(x_adv), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1} (eps {eps:.3f}): last batch loss {loss.item():.3f}", flush=True)
    return model.eval()


def save(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.half() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    print("wrote", path)


def main(out_dir: Path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = load_mnist(ROOT / "tests" / "data" / "mnist", train=True)
    save(adversarial_training(build_model("B"), x, y, 0.3, EPOCHS), out_dir / "model_b_mnist.pt")
    torch.manual_seed(0)
    x, y = synthetic_cifar(2000, seed=0)
    save(adversarial_training(cifar_shaped_cnn(), x, y, 8 / 255, 3), out_dir / "cnn_cifar_shaped.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "data" / "autoattack")
