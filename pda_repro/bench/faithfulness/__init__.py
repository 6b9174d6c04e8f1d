"""Experiment `faithfulness`: which explanation is faithful to the model, and does efficient PDA agree with PDA?

    make benchmark EXPERIMENTS=faithfulness      # -> results/<env>/faithfulness.csv, agreement.csv,
                                                 #    faithfulness_randomisation.csv, faithfulness_curves.csv (+ .json)
    make figures                                 # curves, ranked bars with bootstrap 95 % intervals, README

Per model (mnist, efficientnet_lite0) three cells, each written as soon as it is done:

* agreement: every map of the plan (computed, or read from results/qualitative/ where the qualitative figures
  already made the very same map), then Spearman / SSIM / top-10 % overlap (pda_repro.evaluate.agreement) of the
  plan's pairs on the pixels both maps cover: PDA vs efficient PDA, vs epda_sampled, efficient PDA vs
  simplified, PDA vs PDA with another seed (the sampling-noise floor), stride 1 vs coarser strides,
  border="clip" vs "shift", and the random / all-equal controls;
* faithfulness: deletion + insertion AUC (blocks of k×k, fills mean / blur / zeros), ROAD MoRF + LeRF AUC and
  faithfulness correlation of every map the plan evaluates, incl. a random and an all-equal map; the mean
  curves over images go to faithfulness_curves.csv;
* faithfulness_randomisation: the model-randomisation sanity check (top layer / all layers re-drawn) for the
  plan's methods.

The explained class is the net's predicted class. Maps and metric evaluations are cached in
the cache directory's faithfulness/ (pda_repro.paths.cache_dir) (a rerun reuses them; a window map that is interrupted resumes from its
checkpoint there). `--profile quick` (the default) is the reduced plan: MNIST's 100 digits with every method,
and on EfficientNet-Lite0 all real photos with the cheap maps and efficient PDA at stride 5, the costly ones
(PDA, strides 1, 2 and 4) on the Fig 14 photos; `paper` is the issue's full plan (efficient PDA at stride 1 on
every photo). Every row says which plan, stride, S, seed and sampler made its map; each agreement JSON cell
lists every map (`notes.maps`, built from the plan) and the CPU seconds of each computed one.

Several processes can share the work before the cells run (each claims a task with a lock file):

    nice -n 19 pda-repro benchmark warm --model efficientnet_lite0 &   # one per core
    make benchmark EXPERIMENTS=faithfulness                             # reads the caches

Modules, in the order of the work:
  plans   the plans: which maps (MapRun) on which images, compared and evaluated how (Plan, plan_for)
  maps    PlanState: the net, images, samplers and every map of a plan, cached on disk; metric evaluations
  cells   the three result cells (agreement, faithfulness, faithfulness_randomisation) and `cells`
  warm    `warm`: the maps and evaluations computed into the caches by several processes
"""
