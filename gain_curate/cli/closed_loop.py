"""`schedule OUT --simulate --pass-rates FILE`: every ranking in a closed loop against known
pass rates (gain_curate.curriculum.closed_loop), one line each:

    zero-variance share, first 50 steps: uniform 0.496
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def zero_variance_lines(
    out: Path,
    params: dict[str, Any],
    pass_rates: Path,
    *,
    pass_rate_key: str | None = None,
    group_size: int = 8,
    seed: int = 0,
) -> tuple[str, list[Any]]:
    """The loop's header and one ZeroVariance per ranking, for the run in OUT. Pass rates are
    matched to its rows by gain_uid (or question), as `validate --pass-rates` matches them;
    learnability needs gain_learn_rank (`predict`), learnability-online the kept states."""
    from gain_curate.checks import pass_rates as pr
    from gain_curate.curriculum.closed_loop import compare, make_loop
    from gain_curate.runfolder.run import open_run

    run = open_run(out)
    table = run.table()
    rows = table.select([c for c in ("gain_uid", "extra_info") if c in table.column_names])
    rates = pr.from_file(Path(pass_rates), rows.to_pylist(), pass_rate_key, None)
    uids = table["gain_uid"].to_pylist()
    loop = make_loop(rates.rate, uids, params["batch_size"], group_size, seed=seed)
    learn = None
    if "gain_learn_rank" in table.column_names:
        learn = np.asarray(table["gain_learn_rank"].to_pylist(), np.int64)[loop.ranks]
    online = {"states": str(out)} if run.manifest.states is not None else None
    return loop.header(len(uids)), compare(loop, params, learn, online)
