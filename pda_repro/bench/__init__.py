"""Benchmarks of the paper's Table 1, Figure 12 and approximation figures (9/10, 11, 16): measured into
results/<env>/ (pda_repro.bench.results), drawn by pda_repro.bench.figures, guarded by
pda_repro.bench.regress. Entry points: `pda-repro benchmark run|regress`, `pda-repro figures`."""
