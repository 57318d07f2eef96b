"""Intake: how a delivered message becomes a scheduled command or an answer (decode, dedupe, policy, custody, cancel, settlement)."""
