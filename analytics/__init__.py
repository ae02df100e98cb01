"""The analytics component: the Spark streaming scorer (``scorer``), the Spark batch analytics
(``batch``), their Spark session and MongoDB reader (``session``, ``mongo_reader``), ``fl-app report``
(``report``) and Superset (``superset``); their commands (``cli``) and how `fl-app run` starts them
(``component``).
"""
