"""Feedback maps beside the methods users compare them with: :class:`~captum_feedback.compare.methods.MethodMaps`
(every method's map of one image, Captum's and the package's, in one call) and the registry of
the names the command line gives them."""
