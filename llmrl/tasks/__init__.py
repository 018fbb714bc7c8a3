"""Tasks: what each experiment trains (model + loss + data), run by llmrl.train.trainer."""
