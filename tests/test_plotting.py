"""The book's figures (memgeo.plotting) draw from the section reports' tables, as the notebooks do."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from memgeo.gradients import ALL  # noqa: E402
from memgeo.plotting import double_descent, gradients, layers, methods, rewind  # noqa: E402


def test_every_figure_draws_from_its_report(smoke_reports):
    _, r = smoke_reports
    lt, rt, dt, gt = (r[k].tables for k in ("layers", "rewind", "double_descent", "gradients"))
    es = r["rewind"]["es"]
    grun = r["gradients"].run
    figs = [
        layers.manifold_examples(lt["data"], lt["manifolds"]),
        layers.accuracy_curves(lt["metrics"], r["layers"]["early_stop"]),
        layers.geometry_vs_layer(lt["summary"], "capacity", r["layers"]["early_stop"], logy=True),
        layers.simulated_vs_meanfield(lt["sim"], lt["sim_control"]),
        rewind.plot_heatmaps(rt["table"], "acc_test", mark_epoch=es),
        rewind.plot_at_epoch(rt["table"], r["rewind"].run, es),
        rewind.plot_maini(rt["table"], mark_epoch=es),
        double_descent.plot_errors(dt["long"], dt["widths"], dt["threshold"]),
        double_descent.plot_neighbours(dt["neighbours"]),
        double_descent.plot_geometry(dt["geometry"], dt["threshold"]),
        gradients.plot_ratio(gt["table"], grun.metrics, grun.early_stop_epoch),
        gradients.plot_coherence(gt["table"], grun.early_stop_epoch),
        gradients.plot_scaling(gt["scaling"], gt["slopes"], layers=[grun.meta["layers"][1], "logits", ALL],
                               components=gt["components"]),
        methods.plot_exact(r["methods"].tables["curves"]),
    ]
    for fig in figs:
        assert fig.axes and fig.get_figwidth() <= 7.0 + 1e-9
        plt.close(fig)
    assert len(figs[6].axes) == 4 and figs[6].axes[0].get_title().startswith("memorization")  # two panels, two colour bars
