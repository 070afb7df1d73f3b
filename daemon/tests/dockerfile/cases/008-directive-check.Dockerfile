# check=skip=JSONArgsRecommended,StageNameCasing;error=true
FROM scratch
