"""Speed figures for apflab, printed as JSON ratios against bare unicorn measured in the same run."""
