"""What users run and look at: the ``captum-feedback`` command (:mod:`.cli`, :mod:`.commands`),
the README's demo (:mod:`.demo`) and the figures (:mod:`.visualization`)."""
