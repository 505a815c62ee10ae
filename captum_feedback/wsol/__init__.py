"""The paper's applications, weakly supervised object localization and segmentation
(Sec. 4): energy maps (:mod:`.energy`), the FSP -> FR pipeline (:mod:`.pipeline`), Procedure 1
(:mod:`.localization`), Procedure 2 (:mod:`.segmentation`), scores (:mod:`.metrics`) and every
method's map, Captum's included (:mod:`.methods`)."""
