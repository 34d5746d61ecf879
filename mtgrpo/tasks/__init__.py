"""Tasks: dataset loaders (procedural math, GSM8K/MATH, TriviaQA, MBPP/HumanEval), the tools an episode can call,
and the search index behind `wiki_search`."""
