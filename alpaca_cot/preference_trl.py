"""TRL's preference trainers, fed the ids of our renderer, and their configs.

``alpaca_cot.pairs`` tokenizes the records; each trainer here is TRL's with the one method that would
process text replaced (DPO/KTO ``_prepare_dataset``, ORPO/CPO ``tokenize_row``); ``RewardTrainer``
takes tokenized rows as they are. Checked against ``trl`` 1.16 (``trl.experimental`` for ORPO and CPO,
whose ``loss_type="simpo"`` with ``cpo_alpha=0`` is SimPO).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("alpaca_cot")


def trainer_class(stage: str):
    """``(trainer class, config class)`` for ``stage``: TRL's, made to take our tokenized rows."""
    if stage in ("dpo", "kto", "rm"):
        from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer

        if stage == "dpo":
            return type("DPOTrainer", (_GivenIds, DPOTrainer), {}), DPOConfig
        if stage == "kto":
            return type("KTOTrainer", (_GivenIdsKTO, KTOTrainer), {}), KTOConfig
        return RewardTrainer, RewardConfig  # takes tokenized rows (chosen_ids, rejected_ids) as they are
    # ORPO and CPO live in trl.experimental (pinned trl<1.17 in requirements.txt); say so once instead of
    # TRL's warning on every import.
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logger.info("--stage %s runs on trl.experimental (ORPO/CPO trainers)", stage)
    if stage == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return type("ORPOTrainer", (_GivenIdsPaired, ORPOTrainer), {}), ORPOConfig
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return type("CPOTrainer", (_GivenIdsPaired, CPOTrainer), {}), CPOConfig


class _GivenIds:
    """DPO: rows already hold ``prompt_ids``/``chosen_ids``/``rejected_ids``; skip TRL's text processing."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


class _GivenIdsKTO:
    """KTO: rows hold ``prompt_ids``/``completion_ids``/``label``; only the KL completions are added.

    KTO's KL term is estimated from mismatched prompt/completion pairs within a batch: here each row
    of a batch of ``per_device_train_batch_size`` takes the completion of the row before it (the first
    row the last one's), the layout TRL's collator expects in ``KL_completion_ids``.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not self.calculate_KL:
            return dataset

        def neighbours(batch):
            completions = batch["completion_ids"]
            return {"KL_completion_ids": completions[-1:] + completions[:-1]}

        return dataset.map(neighbours, batched=True, batch_size=args.per_device_train_batch_size)


class _GivenIdsPaired:
    """ORPO / CPO (SimPO): ``tokenize_row`` builds their row layout from our ids instead of text.

    Labels are -100 on the prompt; ORPO's own NLL term (over prompt and response, as TRL computes it)
    does not read them.
    """

    def tokenize_row(self, feature, model=None) -> dict:
        prompt = list(feature["prompt_ids"])
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            response = list(feature[f"{side}_ids"])
            row[f"{side}_input_ids"] = prompt + response
            row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(response))
            row[f"{side}_labels"] = [-100] * len(prompt) + response
        return row


def stage_config(stage: str, params: dict, cutoff_len: int) -> dict:
    """The TRL config fields of ``stage`` (everything else comes from our training flags)."""
    common = {"gradient_checkpointing": False}  # prepared by train.prepare_base when asked, not by TRL
    if stage == "dpo":
        return {**common, "beta": params["beta"], "loss_type": [params["loss"]],
                "label_smoothing": params["label_smoothing"], "max_length": None}
    if stage == "kto":
        return {**common, "beta": params["beta"], "desirable_weight": params["desirable_weight"],
                "undesirable_weight": params["undesirable_weight"], "max_length": None,
                "train_sampling_strategy": "sequential"}  # see _GivenIdsKTO
    if stage == "orpo":
        return {**common, "beta": params["beta"], "max_length": cutoff_len}
    if stage == "simpo":
        return {**common, "loss_type": "simpo", "cpo_alpha": 0.0, "beta": params["beta"],
                "simpo_gamma": params["gamma"], "label_smoothing": params["label_smoothing"],
                "max_length": cutoff_len}
    return {**common, "max_length": None}  # rm
