FROM scratch
RUN ["c:\windows\system32\tasklist.exe"]
RUN ["c:\\windows\\system32\\tasklist.exe"]
