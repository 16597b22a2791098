"""Reinforcement-learning pieces shared by the RL objectives (sprout/train/objectives/{grpo,ppo,spo,agent}.py):
rollouts (rollout.py), rewards (rewards.py, reward_model.py), built-in verifiable tasks (tasks.py)."""
