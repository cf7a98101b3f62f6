<?php
// Until configure-module: a read-only wiki without accounts.
$conf['title'] = 'DokuWiki';
$conf['license'] = 'cc-by-sa';
$conf['useacl'] = 1;
$conf['superuser'] = '@admin';
