# Horovod 0.28.1's CMake forces C++14, torch 2.13 headers need C++17.
# Passed via the CMAKE_TOOLCHAIN_FILE environment variable so Horovod's source stays untouched.
set(CMAKE_USER_MAKE_RULES_OVERRIDE_CXX "${CMAKE_CURRENT_LIST_DIR}/cxx17-rules.cmake")
