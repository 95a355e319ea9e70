"""Trainers: the online RL loop and supervised fine-tuning."""
