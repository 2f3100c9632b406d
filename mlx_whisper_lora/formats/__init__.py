"""File formats: adapter folders, PEFT, transformers, CTranslate2, checkpoints, transcripts. Framework-free."""
