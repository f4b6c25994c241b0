"""Learned LR schedules inside training frameworks, one module per framework and optional extra.

``metalr.integrations.lightning`` (``pip install 'metalr[lightning]'``),
``metalr.integrations.transformers`` (``'metalr[transformers]'``) and
``metalr.integrations.timm`` (``'metalr[timm]'``); docs/scheduler.md says where each one gets the
step's loss from. Nothing is imported here, so ``import metalr`` never pulls a framework in.
"""
