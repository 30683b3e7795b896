"""The `ray job submit` targets: thin entry points (featurize, pretrain, finetune, tune,
predict, evaluate) over one folder per workflow and the shared kit (jobs/kit)."""
