"""`lsa-fast reproduce`: the paper's Tables 2-4 over several seeds, beside the paper's numbers.

Every row of the table (Normal, AT-<base>, AT-<base>-LR-L<k>, see lsa_fast.paper) is
trained from scratch for every seed with one ReproduceSettings object shared by all
rows (no per-row tuning); on Moons a sweep adds, for the sweep bases (FGSM and PGD),
the LR-L<sweep_layer> row at every gamma of sweep_gammas and every gradient path of
sweep_lr_grads; on MNIST the same rows on the PGD base sit beside Table 3 (extra_rows).
Every run is evaluated under FGSM and under PGD (eval_pgd_steps steps, random start)
over the paper's eps grid, with an R&G score under each, under AutoAttack at the
training eps, for the final weights and, with a validation split (val_size), the best
robust epoch's too, and analysed
with LSA (mean relative error per layer under FGSM and PGD, the paper's Fig. 5). Seed s
fixes the data draw (Moons), the initial weights, the batch order and the attacks'
random starts of every row alike, so an LR row and its base are compared seed by seed
(paired differences with a t interval, lsa_fast.reproduce.paired).

The probes are the settings' preset ("activations" by default: LR-Lk regularises the
k-th activation output, where the authors' code takes it). Moons are standardized by
default (z-scored with the training split's statistics, the units the paper's numbers
fit); every eps is in the dataset's units.

Output directory: settings.json (written before the first run: the settings cannot
follow the results), runs.jsonl (one line per finished run, as they finish),
report.json (settings, every seed's numbers, summaries, claims), report.md, and the
figures rg_scores.png (Fig. 6) and cm_layers.png (Fig. 5). On the CPU, `workers`
processes train runs side by side, each on one thread (the results do not depend on
the number of workers).

Modules, each importing only those before it: records (the typed records the others
pass: a run, a paired interval and its verdict, a claim's statement, the claims, a
row's summary, the report; made from and turned into JSON only where a file is read or
written), robustness (the AutoAttack column and the final / best-robust weight
columns), settings (what is run), paired (the paired t statistics), claims
(report.json's summary and the verdicts), markdown (report.md), figures, running
(training, evaluating and analysing every run, writing the files). The paper's
published tables are lsa_fast.paper (evaluation reads their eps grids too).
"""
from .claims import REPORT_FORMAT, paper_claims, summarise
from .figures import plot_cm_layers, plot_rg_scores
from .markdown import to_markdown
from .records import Claims, ColumnSummary, CurveSummary, PairedDifference, Report, RowSummary, RunRecord, Statement
from .running import run_reproduce, run_variant
from .settings import EVAL_ATTACKS, ReproduceSettings, Variant, apply_overrides, variants

__all__ = ["ReproduceSettings", "Variant", "variants", "run_reproduce", "run_variant", "summarise", "paper_claims",
           "to_markdown", "plot_rg_scores", "plot_cm_layers", "apply_overrides", "REPORT_FORMAT", "EVAL_ATTACKS",
           "RunRecord", "RowSummary", "ColumnSummary", "CurveSummary", "Report", "Claims", "PairedDifference",
           "Statement"]
