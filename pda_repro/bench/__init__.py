"""Benchmarks of the paper's Table 1, Figure 12 and approximation figures (9/10, 11, 16), the incremental and
faithfulness experiments, and stand-alone measurements: measured into results/<env>/ (pda_repro.bench.results),
drawn by pda_repro.bench.figures, guarded by pda_repro.bench.regress.

Entry points: `pda-repro benchmark run|regress|batch|sampler|parallel|module|warm`, `pda-repro figures`
(pda_repro.bench.cli_commands).

Modules, in the order of a run:
  settings        RunSettings: the one frozen settings object of a `benchmark run`
  context         BenchContext: the settings, the result store, the models and samplers loaded once
  runner          the cells the settings select (parse_models, plan_cells), then `run`
  cells           Cell, CellSkipped and `run_cells` (skip, resume, progress, free the nets)
  timing          timing helpers: time_calls, summarise, PeakMemory, Progress, limit_threads
  inputs          the images and conditional samplers the experiments use
  table1, fig12, incremental, approximation, faithfulness/   the experiments' cells
  batch_size, sampler_speed, parallel_speed, incremental_module   stand-alone measurements
  results         results/<env>/: env names, machine metadata, atomic writers, ResultStore
  figures         `render_all` and the project README's generated blocks; drawn by speed_figures,
                  approximation_figures, faithfulness_figures; results/README.md by results_readme,
                  faithfulness_report, parallel_report (shared helpers: figure_data)
  regress         the runtime regression check
"""
