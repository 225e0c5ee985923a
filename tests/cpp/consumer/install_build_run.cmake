# CTest script (CMakeLists.txt, test cmake_package_consumer): installs the build in BUILD_DIR with
# `cmake --install` into a prefix inside it, then configures, builds and runs the consumer project
# CONSUMER_DIR against that prefix (CMAKE_PREFIX_PATH holds only the prefix: the package config
# finds LibTorch itself), and runs the installed deeprebirth-run when there is one.
#   cmake -DBUILD_DIR=... -DCONSUMER_DIR=... -DGENERATOR=... -DBUILD_TYPE=... \
#         -P install_build_run.cmake
set(_work "${BUILD_DIR}/consumer-test")
set(_prefix "${_work}/prefix")

function(run_step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    string(REPLACE ";" " " _command "${ARGN}")
    message(FATAL_ERROR "failed (${_rc}): ${_command}")
  endif()
endfunction()

file(REMOVE_RECURSE "${_prefix}")  # no files left over from an earlier install
run_step(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${_prefix}")
run_step(${CMAKE_COMMAND} -S "${CONSUMER_DIR}" -B "${_work}/build" -G "${GENERATOR}"
         -DCMAKE_BUILD_TYPE=${BUILD_TYPE} -DCMAKE_PREFIX_PATH=${_prefix})
run_step(${CMAKE_COMMAND} --build "${_work}/build")
run_step("${_work}/build/deeprebirth_consumer")
# The installed runner (built when OpenCV is found) starts without any library path set.
if(EXISTS "${_prefix}/bin/deeprebirth-run")
  run_step(${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH "${_prefix}/bin/deeprebirth-run" --help)
endif()
