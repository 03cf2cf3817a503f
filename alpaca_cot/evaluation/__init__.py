"""Evaluation: answer extraction and scoring of model outputs."""
