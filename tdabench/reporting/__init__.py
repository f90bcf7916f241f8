"""Reading result records into tables, figures and comparisons: the leaderboard, plots, the
agreement between tiers and paired comparisons of two records."""
